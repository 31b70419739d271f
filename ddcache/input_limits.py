"""Default bounds on what one raw annotation line may make the builder allocate.

Raw datasets may come from someone else, and a few bytes can declare a huge
object: a ``colspan="1000000"``, a 30000 x 30000 PNG, a PDF page of
14400 x 14400 points rendered at 300 dpi. Anything over a limit is skipped
and counted (reason ``too_large``) instead of exhausting memory. Each limit
is a ``ddcache build`` option (``--max-line-bytes``, ``--max-grid``,
``--max-pixels``); the defaults are far above any real FinTabNet or
PubTabNet table and are listed in the README ("Reliability").
"""
from .schema import MAX_IMAGE_PIXELS

MAX_LINE_BYTES = 4 << 20  # one annotation line (real lines: a few KB to ~200 KB); json.loads holds ~25x this
MAX_GRID = 100_000  # rows x columns of one table, every slot of a spanning cell counted
MAX_PIXELS = MAX_IMAGE_PIXELS  # one render (table crop or page) and one decoded raster source image
MAX_TABLES_PER_PAGE = 1000  # page mode: lines naming one page (real pages: a handful)
MAX_COORDINATE = 1e9  # |coordinate| of a box, in source units (points / pixels)
