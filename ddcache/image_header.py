"""Image dimensions from a PNG or JPEG header, without decoding a pixel.

A decoder allocates the image its header declares: a few KB of PNG can
declare 30000 x 30000 pixels (2.7 GB decoded). Reading the size first lets
the record codec and the raster page reader refuse such images before any
allocation (see ``schema.MAX_IMAGE_PIXELS``). Pure functions over bytes.
"""
import struct

from .regular_file import open_regular

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Start-of-frame markers carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) share the range but are not frames.
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_JPEG_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM, RST0-7: no length field


class HeaderError(ValueError):
    """The bytes do not start with a readable PNG / JPEG header."""


def png_size(data):
    """(height, width) declared by a PNG's IHDR chunk."""
    if len(data) < 24 or data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR":
        raise HeaderError("not a PNG (no signature / IHDR chunk)")
    width, height = struct.unpack(">II", data[16:24])
    return height, width


def jpeg_size(data):
    """(height, width) of a JPEG's first frame header (the one a decoder uses).

    Walks the marker segments from SOI to the first SOFn; SOS or EOI before
    a frame header, a truncated segment or a zero height (size deferred to a
    DNL marker, which decoders handle poorly) are errors.
    """
    n = len(data)
    if n < 4 or data[0] != 0xFF or data[1] != 0xD8:
        raise HeaderError("not a JPEG (no SOI marker)")
    i = 2
    while i < n:
        if data[i] != 0xFF:
            raise HeaderError(f"JPEG marker expected at byte {i}")
        while i < n and data[i] == 0xFF:  # fill bytes
            i += 1
        if i >= n:
            break
        marker = data[i]
        i += 1
        if marker in _JPEG_STANDALONE:
            continue
        if marker in (0xD9, 0xDA):
            raise HeaderError("JPEG has no frame header before its image data")
        if i + 2 > n:
            break
        (length,) = struct.unpack(">H", data[i:i + 2])
        if length < 2 or i + length > n:
            break
        if marker in _JPEG_SOF:
            if length < 7:
                break
            height, width = struct.unpack(">HH", data[i + 3:i + 7])
            if height == 0:
                raise HeaderError("JPEG frame height 0 (deferred to a DNL marker) is not supported")
            return height, width
        i += length
    raise HeaderError("truncated JPEG header")


def image_size(data):
    """(height, width) of PNG or JPEG ``data`` (detected from the first bytes); HeaderError otherwise."""
    if data[:8] == PNG_SIGNATURE:
        return png_size(data)
    if data[:2] == b"\xff\xd8":
        return jpeg_size(data)
    raise HeaderError("neither a PNG nor a JPEG")


def file_image_size(path, head_bytes=1 << 20):
    """(height, width) of the image file at ``path`` from its first ``head_bytes`` (a JPEG's metadata segments come first).

    The file is opened with :func:`regular_file.open_regular`, so a FIFO or device is refused, not waited on.
    """
    with open_regular(path) as f:
        return image_size(f.read(head_bytes))
