"""Pages: render a region of a source page into pixels.

Two kinds: vector PDF pages (FinTabNet; rendered with pypdfium2, only the
requested region is rasterised) and raster images (PubTabNet; decoded with
OpenCV, resized when a scale other than 1 is asked for). Both map source
boxes to page pixels (origin top-left) so the cropper does not care which it
has, and both say how many pixels a render would allocate
(``render_pixels``) so the cropper can refuse a hostile page size first.
"""
import math

import cv2
import numpy as np

from .errors import SkipSample
from .geometry import PageFrame, pdf_to_pixels, pixels_to_pdf
from .image_header import HeaderError, file_image_size
from .regular_file import open_regular
from .schema import MAX_RECORD_BYTES


class PdfPage:
    """One page of a PDF; source units are points, origin bottom-left of the rendered box."""

    def __init__(self, path):
        import pypdfium2 as pdfium

        try:
            self._doc = pdfium.PdfDocument(str(path))
        except FileNotFoundError:
            raise SkipSample("missing_file", str(path)) from None
        except Exception as exc:  # pdfium raises PdfiumError with varied codes
            raise SkipSample("corrupt_file", f"{path}: {exc}") from None
        if len(self._doc) < 1:
            self.close()
            raise SkipSample("corrupt_file", f"{path}: no page")
        self._page = self._doc[0]
        if self._page.get_rotation() % 360 != 0:
            self.close()
            raise SkipSample("unsupported_page", f"{path}: rotated page")
        # pdfium renders the visible box (media box intersected with crop box);
        # its lower-left corner is the origin of the FACTS §1 formula.
        self.mediabox = tuple(float(v) for v in self._page.get_mediabox())
        self.box = tuple(float(v) for v in self._page.get_bbox())
        self.width, self.height = (float(v) for v in self._page.get_size())

    def frame(self, scale):
        return PageFrame((self.box[0], self.box[1], self.box[0] + self.width, self.box[1] + self.height), scale)

    def size_px(self, scale):
        """Bitmap size of the full page at ``scale`` (pdfium rounds up)."""
        return math.ceil(self.width * scale), math.ceil(self.height * scale)

    def render_pixels(self, scale, region):
        """Pixels ``render`` allocates for ``region``: pdfium rasterises only the clip."""
        x0, y0, x1, y1 = region
        return max(0, x1 - x0) * max(0, y1 - y0)

    def to_pixels(self, boxes, scale):
        return pdf_to_pixels(boxes, self.frame(scale))

    def to_source(self, boxes_px, scale):
        return pixels_to_pdf(boxes_px, self.frame(scale))

    def render(self, scale, region):
        """uint8 BGR image of page-pixel ``region`` (x0, y0, x1, y1 ints) at ``scale``."""
        x0, y0, x1, y1 = region
        full_w, full_h = self.size_px(scale)
        eps = 1e-3  # pdfium ceils crop*scale: stay just below the integer we mean
        crop = ((x0 - eps) / scale, (full_h - y1 - eps) / scale, (full_w - x1 - eps) / scale, (y0 - eps) / scale)
        crop = tuple(max(0.0, c) for c in crop)
        bitmap = self._page.render(scale=scale, crop=crop)
        img = np.array(bitmap.to_numpy()[:, :, :3], copy=True)
        if img.shape[:2] != (y1 - y0, x1 - x0):
            raise SkipSample("render_error", f"rendered {img.shape[:2]}, expected {(y1 - y0, x1 - x0)}")
        return img

    def close(self):
        try:
            self._doc.close()
        except Exception:
            pass


class RasterPage:
    """One raster image; source units are its pixels, origin top-left.

    Opening reads only the header (the size a decoder would allocate), so the
    cropper can refuse an oversized image (``render_pixels``) before any
    pixel is decoded; the pixels are decoded on the first ``render``. A FIFO
    or device is refused (``corrupt_file``), not waited on.
    """

    def __init__(self, path):
        self.path = path
        try:
            h, w = file_image_size(path)
        except FileNotFoundError:
            raise SkipSample("missing_file", str(path)) from None
        except (OSError, HeaderError) as exc:
            raise SkipSample("corrupt_file", f"{path}: {exc}") from None
        if h < 1 or w < 1:
            raise SkipSample("corrupt_file", f"{path}: {w}x{h} pixels")
        self.height, self.width = float(h), float(w)
        self.mediabox = (0.0, 0.0, self.width, self.height)
        self.box = self.mediabox
        self.image = None

    def size_px(self, scale):
        return int(round(self.width * scale)), int(round(self.height * scale))

    def render_pixels(self, scale, region):
        """Pixels ``render`` allocates at most: the decoded image and its resized copy."""
        w, h = self.size_px(scale)
        return max(int(self.width) * int(self.height), w * h)

    def to_pixels(self, boxes, scale):
        return np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * scale

    def to_source(self, boxes_px, scale):
        return np.asarray(boxes_px, dtype=np.float64).reshape(-1, 4) / scale

    def _decode(self):
        try:
            with open_regular(self.path, max_bytes=MAX_RECORD_BYTES) as f:
                data = f.read()
        except OSError as exc:
            raise SkipSample("corrupt_file", f"{self.path}: {exc}") from None
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        if img is None or img.shape[:2] != (int(self.height), int(self.width)):
            raise SkipSample("corrupt_file", f"{self.path}: does not decode to its header's {int(self.width)}x{int(self.height)}")
        return img

    def render(self, scale, region):
        x0, y0, x1, y1 = region
        if self.image is None:
            self.image = self._decode()
        img = self.image
        if scale != 1.0:
            w, h = self.size_px(scale)
            img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        return np.ascontiguousarray(img[y0:y1, x0:x1])

    def close(self):
        self.image = None
