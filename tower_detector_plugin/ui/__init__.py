"""The plugin's widgets: dialogs, docks, the area picker and the review dock. They import core/, never
processing/; the menu and toolbar that open them are wired in ../plugin.py."""
