"""GeoTIFF, COG and VRT rasters, local or remote, warped to zoom-z tiles.

Spec
    a local path, http(s) URL (GDAL /vsicurl/), s3://bucket/key (/vsis3/) or /vsi... path ending .tif, .tiff or
    .vrt, in any CRS: each tile's EPSG:3857 bounds are warped to tile_size px (bilinear, a WarpedVRT per tile),
    one dataset handle per thread. Tiles the raster does not reach, or where it is all nodata/transparent, are
    "outside imagery"; partly covered tiles are black where there is no data. Bands: 1 band -> gray to RGB;
    2 bands -> gray and alpha; 3+ bands -> the first three unless `bands` picks them; a band flagged alpha is the
    validity mask and is dropped. uint16/int16 are scaled linearly from 0..2^NBITS-1 to 0..255 (NBITS is the TIFF
    tag, 16 for uint16 and 15 for int16 when absent), rounded; other data types are refused. A zoom whose pixels
    are over MAX_COARSENESS times finer than the raster's is refused. Read errors are transient (see base.py).
"""

import os
from urllib.parse import urlsplit

import numpy as np

from ...common.errors import UserError, one_line
from ...common.redaction import redact
from ...geo.tilemath import resolution, tile_bounds_3857
from .base import ImagerySource, TileError

MAX_COARSENESS = 4  # raster pixels up to this many times a zoom's pixel size are still usable


def _gdal_options(spec, retries, timeout, backoff):
    options = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR", "GDAL_HTTP_MAX_RETRY": str(retries),
               "GDAL_HTTP_RETRY_DELAY": str(backoff), "GDAL_HTTP_TIMEOUT": str(max(1, int(timeout)))}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint and spec.lower().startswith(("s3://", "/vsis3/")):
        # GDAL 3.10 does not read AWS_ENDPOINT_URL; it wants the host and the scheme apart
        parts = urlsplit(endpoint)
        options.update(AWS_S3_ENDPOINT=parts.netloc + parts.path.rstrip("/"),
                       AWS_HTTPS="YES" if parts.scheme == "https" else "NO", AWS_VIRTUAL_HOSTING="FALSE")
    return options


class GeoTiffSource(ImagerySource):
    kind = "geotiff"

    def __init__(self, spec, *, bands=None, retries=4, timeout=30.0, backoff=0.5, **common):
        import rasterio

        super().__init__(redact(spec), **common)
        self._spec = spec
        self._options = _gdal_options(spec, retries, timeout, backoff)
        try:
            with rasterio.Env(**self._options), rasterio.open(spec) as ds:
                self._inspect(ds, bands)
        except rasterio.errors.RasterioError as exc:
            raise UserError(redact(f"cannot open imagery {self.description}: {one_line(exc)}")) from None

    def _inspect(self, ds, bands):
        from rasterio.enums import ColorInterp
        from rasterio.warp import calculate_default_transform, transform_bounds

        if ds.crs is None:
            raise UserError(f"imagery {self.description} has no coordinate reference system")
        dtype = np.dtype(ds.dtypes[0])
        if dtype not in (np.uint8, np.uint16, np.int16):
            raise UserError(f"imagery {self.description} has {dtype} pixels; convert it to 8 or 16-bit integers "
                            f"(gdal_translate -ot Byte -scale)")
        alpha = [i + 1 for i, c in enumerate(ds.colorinterp) if c == ColorInterp.alpha]
        self._alpha = alpha[0] if alpha else 0
        colour = [b for b in range(1, ds.count + 1) if b != self._alpha]
        if bands is not None:
            bands = [int(b) for b in bands]
            if len(bands) not in (1, 3) or not all(1 <= b <= ds.count for b in bands):
                raise UserError(f"bands must be 1 or 3 band numbers within 1..{ds.count}, not {bands}")
        else:
            bands = colour[:3] if len(colour) >= 3 else colour[:1]
        self._bands = bands
        self._dtype = dtype
        bits = ds.tags(bands[0], ns="IMAGE_STRUCTURE").get("NBITS")  # a band-level tag
        bits = int(bits) if bits and bits.isdigit() else (8 if dtype == np.uint8 else 16 if dtype == np.uint16 else 15)
        self._max_value = (1 << bits) - 1
        self._bounds = transform_bounds(ds.crs, "EPSG:3857", *ds.bounds, densify_pts=21)
        transform, _, _ = calculate_default_transform(ds.crs, "EPSG:3857", ds.width, ds.height, *ds.bounds)
        self._pixel_size = abs(transform.a)  # EPSG:3857 metres

    def _check_zoom(self, z):
        coarseness = self._pixel_size / resolution(z)
        if coarseness > MAX_COARSENESS:
            raise UserError(f"imagery {self.description} has {self._pixel_size:.3g} m pixels, {coarseness:.0f}x "
                            f"coarser than zoom {z} ({resolution(z):.3g} m): too coarse to show towers")

    def _open(self):
        import rasterio

        with rasterio.Env(**self._options):
            return rasterio.open(self._spec)

    def _load(self, x, y, z):
        import rasterio
        from affine import Affine
        from rasterio.enums import Resampling
        from rasterio.vrt import WarpedVRT

        left, bottom, right, top = tile_bounds_3857(x, y, z)
        b = self._bounds
        if left >= b[2] or right <= b[0] or bottom >= b[3] or top <= b[1]:
            raise TileError("outside imagery", "outside")
        size = self.tile_size
        transform = Affine((right - left) / size, 0, left, 0, -(top - bottom) / size, top)
        try:
            ds = self._thread_handle(self._open)
            # a WarpedVRT per tile: rasterio's reproject() into arrays warns spuriously when threads overlap
            with rasterio.Env(**self._options), WarpedVRT(
                    ds, crs="EPSG:3857", transform=transform, width=size, height=size,
                    resampling=Resampling.bilinear, src_alpha=self._alpha, add_alpha=not self._alpha) as vrt:
                data = vrt.read(indexes=[*self._bands, self._alpha or ds.count + 1])
        except rasterio.errors.RasterioError as exc:
            raise TileError(f"read error: {one_line(exc)}", "transient") from None
        rgb, valid = data[:-1], data[-1]
        if not valid.any():
            raise TileError("outside imagery", "outside")  # inside the bounds, but all nodata
        if self._dtype != np.uint8:
            scaled = np.clip(rgb, 0, self._max_value).astype(np.float32) * (255.0 / self._max_value)
            rgb = np.rint(scaled).astype(np.uint8)
        if len(rgb) == 1:
            rgb = np.repeat(rgb, 3, axis=0)
        return np.ascontiguousarray(rgb.transpose(1, 2, 0))
