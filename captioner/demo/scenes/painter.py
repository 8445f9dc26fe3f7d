"""The painter: the frames of a drawn clip, every attribute of its `SceneSpec` visible at 64x64.

Each attribute is drawn so that it survives the demo model's 64x64 input: the time of day sets the
sky and the light, the weather is a coarse texture (rain streaks, snow dots, washed-out fog) and
the moving object is big and crosses the centre of the picture, where the processor's centre
crop keeps it. A seed only varies minor details (ridges, buildings, trees, offsets).
"""

from __future__ import annotations

import numpy as np

from captioner.demo.scenes.vocabulary import SceneSpec

__all__ = ["Painter"]

# Coordinates: x runs 0..1 over the width, y 0..1 down the height; sizes and horizontal offsets
# of shapes are in height units (dx = (x - cx) * aspect), so shapes keep their proportions.
_SKY = {  # (top, horizon, light on the ground, tint of the light)
    "morning": ((250, 165, 190), (255, 225, 185), 0.85, (1.05, 0.9, 0.9)),
    "day": ((35, 105, 230), (140, 195, 250), 1.0, (1.0, 1.0, 1.0)),
    "evening": ((105, 35, 95), (250, 105, 35), 0.6, (1.15, 0.75, 0.6)),
    # Moonlit rather than dark: at 0.3 the families could not be told apart at night (measured: a
    # trained demo adapter named the wrong scene for most night clips).
    "night": ((4, 6, 22), (20, 28, 68), 0.5, (0.8, 0.85, 1.15)),
}


class Painter:
    """Draws the frames of one clip: the still background once, then the mover and the weather."""

    horizon = 0.42  # the sea's; set by `_sea`
    texture: np.ndarray  # rain or snow, with `pad` rows above and columns each side; see `slide`
    pad = (0, 0)

    def __init__(self, spec: SceneSpec, width: int, height: int, seed: int) -> None:
        self.spec = spec
        self.rng = np.random.default_rng([seed, 0xC11])
        self.aspect = width / height
        self.x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
        self.y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
        top, bottom, self.light, tint = _SKY[spec.time]
        self.tint = np.asarray(tint, dtype=np.float32) * self.light
        # Movers stay bright enough to be seen at night and through fog.
        self.mover_tint = np.asarray(tint, dtype=np.float32) * (0.55 + 0.45 * self.light)
        jitter = self.rng.uniform(-6, 6, 3)
        mix = self.y[..., None] ** 0.8
        sky = np.asarray(top, np.float32) * (1 - mix) + np.asarray(bottom, np.float32) * mix + jitter
        self.background = np.broadcast_to(sky, (height, width, 3)).copy()
        shift = self.rng.uniform(-0.02, 0.02)
        start, end = 0.3 + shift, 0.7 + shift
        self.path = (start, end) if spec.direction == "left_to_right" else (end, start)
        self.facing = 1.0 if spec.direction == "left_to_right" else -1.0
        self.lift = float(self.rng.uniform(-0.02, 0.02))
        self.phase = float(self.rng.uniform(0, 1))
        self.noise = self.rng.random((64, 64, 4), dtype=np.float32)
        _BACKGROUNDS[spec.family](self)
        self.frame_buf = self.background
        if spec.weather in _TEXTURES:
            pattern, fall, sway = _TEXTURES[spec.weather]
            self.pad = (int(np.ceil(fall * (height - 1))), int(np.ceil(sway * (height - 1))))
            ys = np.arange(-self.pad[0], height, dtype=np.float32)[:, None] / max(height - 1, 1)
            xs = np.arange(-self.pad[1], width + self.pad[1], dtype=np.float32)[None, :] / max(height - 1, 1)
            self.texture = pattern(self, xs, ys)

    def fill(self, mask: np.ndarray, colour: tuple[float, float, float], mover: bool = False) -> None:
        """Paint `colour`, in this time of day's light, where `mask` is set (on this frame if `mover`)."""
        target = self.frame_buf if mover else self.background
        light = self.mover_tint if mover else self.tint
        target[np.broadcast_to(mask, target.shape[:2])] = np.asarray(colour, np.float32) * light

    def slide(self, down: float, right: float) -> np.ndarray:
        """The frame-sized part of the weather texture, moved `down` and `right` (height units)."""
        height, width = self.background.shape[:2]
        top, left = self.pad[0] - round(down * (height - 1)), self.pad[1] - round(right * (height - 1))
        return self.texture[top : top + height, left : left + width]

    def frame(self, t: float) -> np.ndarray:
        """The picture at time `t` (0 = first frame, 1 = last) as (H, W, 3) uint8 RGB."""
        self.frame_buf = self.background.copy()
        _ANIMATE.get(self.spec.family, lambda p, t: None)(self, t)
        cx = self.path[0] + (self.path[1] - self.path[0]) * t
        _MOVERS[self.spec.family](self, (self.x - cx) * self.aspect * self.facing)
        _WEATHER_DRAW[self.spec.weather](self, t)
        return np.clip(self.frame_buf, 0, 255).astype(np.uint8)


def _ridges(p: Painter, count: int, top: tuple[float, float], slope: tuple[float, float]) -> np.ndarray:
    """Height line (y of the ridge at each x) of `count` triangular peaks."""
    ridge = np.full_like(p.x, 1.0)
    for peak_x in np.sort(p.rng.uniform(-0.1, 1.1, count)):
        peak_y, steep = p.rng.uniform(*top), p.rng.uniform(*slope)
        ridge = np.minimum(ridge, peak_y + steep * np.abs(p.x - peak_x) * p.aspect)
    return ridge


def _mountain(p: Painter) -> None:
    far, near = _ridges(p, 4, (0.22, 0.36), (0.5, 0.8)), _ridges(p, 3, (0.52, 0.62), (0.25, 0.45))
    p.fill(p.y > far, (100, 105, 150))
    p.fill((p.y > far + 0.03) & (p.y > far + 0.35 * (p.x * 3 % 1.0)), (85, 90, 135))  # shaded faces
    p.fill(p.y > near, (40, 100, 50))


def _city(p: Painter) -> None:
    left = -0.02
    cell_x, cell_y = p.x * p.aspect / 0.07, p.y / 0.07
    panes = ((cell_x % 1.0) > 0.3) & ((cell_x % 1.0) < 0.75) & ((cell_y % 1.0) > 0.3) & ((cell_y % 1.0) < 0.75)
    lamp = _cells(p, np.floor(cell_x), np.floor(cell_y), 0)
    while left < 1.02:
        right = left + p.rng.uniform(0.07, 0.14)
        top, grey = p.rng.uniform(0.15, 0.5), p.rng.uniform(60, 90)
        block = (p.x >= left) & (p.x < right - 0.006) & (p.y > top) & (p.y < 0.8)
        p.fill(block, (grey, grey, grey + 15))
        window = block & panes & (p.y > top + 0.03)
        if p.spec.time == "night":
            p.background[window & (lamp < 0.75)] = (255, 215, 100)  # lamps, not lit by the sky
        else:
            p.fill(window, (175, 200, 230))
        left = right
    p.fill(p.y >= 0.8, (55, 55, 62))
    p.fill((np.abs(p.y - 0.965) < 0.012) & ((p.x * p.aspect / 0.25) % 1.0 < 0.5), (235, 230, 200))


def _sea(p: Painter) -> None:
    p.horizon = 0.42 + p.rng.uniform(-0.02, 0.02)
    depth = np.clip((p.y - p.horizon) / (1 - p.horizon), 0, 1)[..., None]
    water = (1 - depth) * np.asarray((35, 90, 160), np.float32) + depth * np.asarray((15, 50, 115), np.float32)
    p.background = np.where((p.y > p.horizon)[..., None], water * p.tint, p.background)


def _sea_waves(p: Painter, t: float) -> None:
    d = np.maximum(p.y - p.horizon, 0)
    phase = 2 * np.pi * (3.0 / (d + 0.06) - 1.5 * t + p.phase) + 1.2 * np.sin(9 * p.x * p.aspect + 7 * p.phase)
    crest = (np.sin(phase) > 0.6) & (p.y > p.horizon + 0.015)
    p.frame_buf[crest] = p.frame_buf[crest] * 0.35 + np.asarray((150, 195, 235), np.float32) * p.tint * 0.65


def _forest(p: Painter) -> None:
    p.fill(p.y > 0.42 + 0.05 * np.sin(5 * p.x + 6 * p.phase), (30, 70, 40))
    p.fill(p.y > 0.72, (80, 115, 50))
    for tree_x in np.sort(p.rng.uniform(-0.05, 1.05, 20)):
        base, height, half = p.rng.uniform(0.6, 0.76), p.rng.uniform(0.32, 0.5), p.rng.uniform(0.06, 0.1)
        rise = (p.y - (base - height)) / height  # 0 at the tip, 1 at the base
        tiers = 0.55 + 0.45 * ((rise * 3) % 1.0)  # a fir's stacked tiers
        tree = (rise > 0) & (rise < 1) & (np.abs(p.x - tree_x) * p.aspect < half * rise * tiers)
        g = p.rng.uniform(0.8, 1.2)
        p.fill(tree, (30 * g, 95 * g, 45 * g))
        p.fill((np.abs(p.x - tree_x) * p.aspect < 0.012) & (p.y >= base) & (p.y < base + 0.04), (90, 60, 35))
    p.fill((p.y > 0.8) & (p.y < 0.96 + 0.02 * np.sin(4 * p.x)), (165, 135, 90))


def _bridge(p: Painter) -> None:
    p.fill(p.y > 0.47, (70, 100, 70))
    p.fill(p.y > 0.53, (40, 95, 140))
    span = 0.55
    offset = p.rng.uniform(0, span)
    along = (p.x * p.aspect + offset) % span  # position within one span
    from_mid = np.abs(along - span / 2) / (span / 2)
    p.fill((p.y > 0.47) & (p.y < np.minimum(0.74, 0.5 + 0.24 * from_mid**2)), (125, 125, 130))
    p.fill((p.y > 0.4) & (p.y <= 0.47), (155, 155, 160))
    p.fill((p.y > 0.385) & (p.y <= 0.4), (90, 90, 95))


def _bridge_water(p: Painter, t: float) -> None:
    glint = (np.sin(2 * np.pi * (30 * p.y + 0.4 * np.sin(7 * p.x) - t + p.phase)) > 0.85) & (p.y > 0.75)
    p.frame_buf[glint] = p.frame_buf[glint] * 0.5 + np.asarray((140, 190, 220), np.float32) * p.tint * 0.5


def _palace(p: Painter) -> None:
    dx = (p.x - 0.5 - p.rng.uniform(-0.03, 0.03)) * p.aspect
    p.fill(p.y > 0.74, (185, 175, 155))
    p.fill((p.y > 0.68) & (p.y <= 0.74) & (np.abs(dx) < 0.6), (150, 145, 135))
    wall = (p.y > 0.48) & (p.y <= 0.68) & (np.abs(dx) < 0.48)
    p.fill(wall, (200, 190, 160))
    bay = ((dx + 0.48) / 0.12) % 1.0  # position between two pillars
    p.fill(wall & (bay < 0.3), (180, 40, 30))
    p.fill(wall & (p.y > 0.55) & (bay > 0.45) & (bay < 0.85), (115, 60, 40))  # doors
    eave = 0.52 - 0.09 * (np.abs(dx) / 0.66) ** 3  # upturned corners
    rise = (p.y - 0.29) / (0.52 - 0.29)
    p.fill((p.y > 0.29) & (p.y < eave) & (np.abs(dx) < 0.36 + 0.3 * rise), (55, 62, 66))
    p.fill((p.y > 0.27) & (p.y <= 0.31) & (np.abs(dx) < 0.4), (30, 34, 36))


def _balloon(p: Painter, dx: np.ndarray) -> None:
    cy = 0.28 + p.lift
    envelope = (dx / 0.13) ** 2 + ((p.y - cy) / 0.15) ** 2 < 1
    p.fill(envelope, (225, 35, 35), mover=True)
    p.fill(envelope & (np.abs(p.y - cy) < 0.035), (250, 200, 40), mover=True)
    p.fill((np.abs(dx) < 0.045) & (p.y > cy + 0.18) & (p.y < cy + 0.24), (120, 70, 30), mover=True)


def _car(p: Painter, dx: np.ndarray) -> None:
    dx, y = dx / 1.15, 0.9 + (p.y - 0.9 - p.lift) / 1.15  # drawn 1.15x, standing on the road
    p.fill((np.abs(dx) < 0.2) & (y > 0.8) & (y < 0.9), (225, 30, 30), mover=True)
    p.fill((np.abs(dx + 0.03) < 0.11) & (y > 0.72) & (y <= 0.8), (200, 25, 25), mover=True)
    p.fill((np.abs(dx + 0.03) < 0.085) & (y > 0.74) & (y <= 0.79), (170, 210, 240), mover=True)
    p.fill(((np.abs(dx) - 0.12) ** 2 + (y - 0.9) ** 2) < 0.04**2, (20, 20, 20), mover=True)
    p.fill((dx > 0.17) & (dx < 0.2) & (y > 0.82) & (y < 0.86), (255, 240, 150), mover=True)  # headlight


def _boat(p: Painter, dx: np.ndarray) -> None:
    line = 0.68 + p.lift
    p.fill((p.y > line - 0.05) & (p.y < line + 0.03) & (np.abs(dx) < 0.14 + 0.07 * (line + 0.03 - p.y) / 0.08)
           & (dx < 0.2 - 0.6 * (p.y - line + 0.05)), (100, 60, 30), mover=True)
    top, foot = line - 0.4, line - 0.06
    height = (p.y - top) / (foot - top)
    p.fill((height > 0) & (height < 1) & (dx > 0.01) & (dx < 0.22 * height), (245, 245, 235), mover=True)
    p.fill((height > 0.25) & (height < 1) & (dx < -0.01) & (dx > -0.12 * height), (235, 235, 225), mover=True)
    p.fill((np.abs(dx) <= 0.01) & (height > -0.05) & (height < 1), (60, 40, 25), mover=True)


def _deer(p: Painter, dx: np.ndarray) -> None:
    cy = 0.73 + p.lift
    dx, y = dx / 1.3, cy + (p.y - cy) / 1.3  # drawn 1.3x about the body's centre
    colour = (150, 80, 35)
    p.fill((dx / 0.15) ** 2 + ((y - cy) / 0.065) ** 2 < 1, colour, mover=True)
    legs = (np.abs(np.abs(dx) - 0.1) < 0.018) | (np.abs(np.abs(dx) - 0.06) < 0.015)
    p.fill(legs & (y > cy) & (y < cy + 0.17), colour, mover=True)
    p.fill((np.abs(dx - 0.13 - 0.3 * (cy - y)) < 0.03) & (y > cy - 0.16) & (y < cy), colour, mover=True)
    p.fill(((dx - 0.2) / 0.055) ** 2 + ((y - cy + 0.17) / 0.035) ** 2 < 1, colour, mover=True)
    antlers = (np.abs(dx - 0.17) < 0.012) | (np.abs(dx - 0.23 + 0.5 * (y - cy + 0.2)) < 0.012)
    p.fill(antlers & (y > cy - 0.29) & (y < cy - 0.18), (70, 45, 25), mover=True)
    p.fill(((dx + 0.15) / 0.03) ** 2 + ((y - cy + 0.03) / 0.03) ** 2 < 1, (240, 235, 225), mover=True)


def _train(p: Painter, dx: np.ndarray) -> None:
    body = (dx > -0.3) & (dx < 0.3 - 0.6 * (0.385 - p.y)) & (p.y > 0.2) & (p.y <= 0.385)  # slanted front
    p.fill(body, (240, 195, 40), mover=True)
    p.fill(body & (p.y > 0.24) & (p.y < 0.3) & ((dx * 12) % 1.0 < 0.6) & (dx < 0.17), (45, 55, 80), mover=True)
    p.fill(body & (dx > 0.2), (205, 40, 30), mover=True)
    p.fill(body & (np.abs(dx + 0.02) < 0.008), (60, 50, 30), mover=True)  # coupling between two cars


def _walker(p: Painter, dx: np.ndarray) -> None:
    foot = 0.97 + p.lift
    dx, y = dx / 1.2, foot + (p.y - foot) / 1.2  # drawn 1.2x, standing on the courtyard
    skirt = (y > foot - 0.24) & (y < foot) & (np.abs(dx) < 0.05 + 0.07 * (y - foot + 0.24) / 0.24)
    p.fill(skirt, (230, 70, 115), mover=True)
    p.fill((y > foot - 0.33) & (y <= foot - 0.24) & (np.abs(dx) < 0.055), (250, 215, 80), mover=True)
    head = dx**2 + (y - foot + 0.375) ** 2 < 0.045**2
    p.fill(head, (235, 195, 160), mover=True)
    p.fill(head & (y < foot - 0.385), (25, 20, 20), mover=True)
    p.fill((dx + 0.05) ** 2 + (y - foot + 0.38) ** 2 < 0.022**2, (25, 20, 20), mover=True)  # hair bun at the back


def _cells(p: Painter, i: np.ndarray, j: np.ndarray, k: int) -> np.ndarray:
    """Random value `k` in [0, 1) of integer cell (i, j), from the clip's own table (repeats every 64 cells)."""
    return p.noise[i.astype(np.int64) % 64, j.astype(np.int64) % 64, k]


def _streaks(p: Painter, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    u = (x + 0.35 * y) / 0.1  # slanted columns, 0.1 height units apart, broken into dashes
    return ((u % 1.0) < 0.3) & (((y / 0.22 + _cells(p, np.floor(u), np.zeros_like(u), 1)) % 1.0) < 0.6)


def _flakes(p: Painter, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    u, v = x / 0.12, y / 0.12  # one flake per cell: evenly spread, and sparse enough to leave movers visible
    ci, cj = np.floor(u), np.floor(v)
    du, dv = u - ci - 0.25 - 0.5 * _cells(p, ci, cj, 1), v - cj - 0.25 - 0.5 * _cells(p, ci, cj, 2)
    return du**2 + dv**2 < 0.24**2


def _rain(p: Painter, t: float) -> None:
    p.frame_buf *= 0.7  # darker and greyer under rain clouds
    p.frame_buf += np.asarray((80, 85, 95), np.float32) * p.light * 0.3
    streak = p.slide(_TEXTURES["rain"][1] * t, 0.0)
    drop = np.asarray((215, 222, 238), np.float32) * (0.55 + 0.45 * p.light)
    p.frame_buf[streak] = p.frame_buf[streak] * 0.25 + drop * 0.75


def _snow(p: Painter, t: float) -> None:
    _, fall, sway = _TEXTURES["snow"]
    p.frame_buf *= 0.85
    p.frame_buf += 255 * 0.15 * p.light
    p.frame_buf[p.slide(fall * t, sway * np.sin(2 * t + 6 * p.phase))] = (245, 245, 250)


def _fog(p: Painter, t: float) -> None:
    p.frame_buf *= 0.5  # washed out, yet the sky's colour still tells the time of day and the scene shows
    p.frame_buf += np.asarray((205, 205, 212), np.float32) * (0.35 + 0.65 * p.light) * 0.5


_BACKGROUNDS = {
    "mountain": _mountain, "city": _city, "sea": _sea, "forest": _forest, "bridge": _bridge, "palace": _palace,
}
_ANIMATE = {"sea": _sea_waves, "bridge": _bridge_water}
_MOVERS = {"mountain": _balloon, "city": _car, "sea": _boat, "forest": _deer, "bridge": _train, "palace": _walker}
_WEATHER_DRAW = {"clear": lambda p, t: None, "rain": _rain, "snow": _snow, "fog": _fog}
# Rain and snow are textures drawn once per clip on a canvas larger than the frame, then slid by
# whole pixels: redrawing them for every frame cost more than all the rest of the drawing.
_TEXTURES = {"rain": (_streaks, 1.6, 0.0), "snow": (_flakes, 0.3, 0.05)}  # (pattern, fall, sway) in height units
