"""MBTiles: a local SQLite file of encoded tiles.

Spec
    a local .mbtiles file (TMS rows, tile_row = 2^z-1-y); zooms outside the metadata's minzoom..maxzoom (or the
    tiles table's) are refused up front, and so are vector tiles. One read-only connection per thread.
"""

import os
import sqlite3
from urllib.parse import quote

from ...common.errors import UserError
from .base import ImagerySource, TileError


class MBTilesSource(ImagerySource):
    kind = "mbtiles"

    def __init__(self, path, **common):
        super().__init__(path, **common)
        self._uri = f"file:{quote(os.path.abspath(path))}?mode=ro"
        try:
            conn = sqlite3.connect(self._uri, uri=True)
            try:
                meta = dict(conn.execute("SELECT name, value FROM metadata").fetchall())
                zooms = conn.execute("SELECT MIN(zoom_level), MAX(zoom_level) FROM tiles").fetchone()
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise UserError(f"{path} is not a readable MBTiles file ({exc})") from None
        if str(meta.get("format", "")).lower() in ("pbf", "mvt"):
            raise UserError(f"{path} holds vector tiles ({meta['format']}), not imagery")
        try:
            self.minzoom = int(meta["minzoom"])
            self.maxzoom = int(meta["maxzoom"])
        except (KeyError, ValueError):
            self.minzoom, self.maxzoom = zooms  # metadata is optional; the tiles table is the truth
        if self.minzoom is None:
            raise UserError(f"{path} holds no tiles")
        self.format = meta.get("format")

    def _check_zoom(self, z):
        if not self.minzoom <= z <= self.maxzoom:
            raise UserError(f"imagery {self.description} has zooms {self.minzoom}-{self.maxzoom}, not {z}")

    def _open(self):
        # closed by close() from the main thread, hence check_same_thread=False; still one per thread
        return sqlite3.connect(self._uri, uri=True, check_same_thread=False)

    def _load(self, x, y, z):
        try:
            row = self._thread_handle(self._open).execute(
                "SELECT tile_data FROM tiles WHERE zoom_level = ? AND tile_column = ? AND tile_row = ?",
                (z, x, (1 << z) - 1 - y)).fetchone()
        except sqlite3.Error as exc:
            raise TileError(f"read error: {exc}", "transient") from None
        if row is None:
            raise TileError("missing tile", "missing")
        return bytes(row[0])
