"""The plugin's logic, without widgets: the CLI's argument lists and its subprocess, jobs, settings, imagery
sources, areas and estimates, result layers and their styles, the review session, OSM editors and Overpass.

Modules here import qgis.core, QtCore, QtGui (colours) and QtNetwork, never QtWidgets or qgis.gui, and nothing of
ui/ or processing/: the dialogs (ui/) and the Processing algorithms (processing/) are both built on this.
"""
