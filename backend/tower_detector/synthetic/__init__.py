"""A synthetic aerial scene with HV towers: the offline stand-in for real imagery in tests, benchmarks and demos.

    write_scene(out, tiles_x=8, tiles_y=8, seed=0)    # scene.tif, towers.geojson, area.geojson (write.py)

A model will learn from this scene, so it avoids shortcuts. Five terrains (sand, farmland, savanna, forest,
rocky hills) blend with frayed boundaries; straight lines, grey things and long shadows are everywhere (roads,
field edges, metal roofs, sheds, pivot irrigation arms, wells, boulders, distribution poles and their wires);
towers are faint lattice squares with cross-arms whose long shadows follow the scene's one sun, in every terrain,
some partly hidden by trees; a final softening and sensor grain cover everything alike.

The scene is planned first (plan.py: a Plan, geometry in pixels, no pixels yet) and then rendered (render.py, with
the drawing primitives of shapes.py and the value noise of noise.py). The same arguments give the same bytes.
Options (plan.Options, `tower-detector synthetic --help`) set the density of HV lines and the realism: JPEG tiles,
low-contrast steel, an off-nadir lean, haze, and confusers (telecom masts, substations, water towers).
"""

from .plan import REALISM, Grid, Options, Plan, plan_scene, scene_grid, scene_options, tower_tiles
from .render import render_scene
from .write import confuser_features, write_scene

__all__ = ["REALISM", "Grid", "Options", "Plan", "confuser_features", "plan_scene", "render_scene", "scene_grid",
           "scene_options", "tower_tiles", "write_scene"]
