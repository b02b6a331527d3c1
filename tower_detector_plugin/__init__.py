"""Tower Detector QGIS plugin: finds power towers in aerial imagery by driving the tower-detector backend CLI."""


def classFactory(iface):  # the name QGIS looks up
    """Return the plugin instance QGIS starts; imported here so importing the package stays cheap."""
    from .plugin import TowerDetectorPlugin

    return TowerDetectorPlugin(iface)
