"""Procedural kerogen scenes in the Stranger Sections 2 layout.

Each scene is a polished rock section seen through a reflected-light microscope: a textured
mineral matrix holding maceral particles (vitrinite bands and lenses, inertinite with cell
structure or as angular fragments, thin liptinite bodies), background confusers (pyrite,
holes, polishing scratches, mounting resin, bubbles, black corners of a rotated field) and
imaging artefacts (uneven illumination, colour cast, soft focus, sensor noise; JPEG on disk).
Images come in two modes: ``"white"`` (reflected white light) and ``"fluorescence"``.

The scenes are drawn so that no fixed grey threshold separates the classes: reflectance levels
vary per image, inertinite overlaps pyrite in brightness, liptinite overlaps holes, resin and
matrix, so a model must use shape, texture and context.

Example:
    >>> rng = np.random.default_rng(0)
    >>> image, mask = render_scene(rng, 256, 320, mode="white")
    >>> image.shape, image.dtype, mask.shape, int(mask.max()) <= 3
    ((256, 320, 3), dtype('uint8'), (256, 320), True)

``write_dataset("synth", labeled=8, unlabeled=64, test=8)`` writes ``synth/train/labeled``,
``synth/train/labels``, ``synth/train/unlabeled``, ``synth/test`` and the test answers in
``synth/test_answers``; every image is a pure function of ``(seed, split, index)``, so a second
run with the same arguments skips the files already there and resumes where the first stopped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from scipy import ndimage
from skimage import draw
from tqdm import tqdm

from ssl_seg import CLASS_NAMES, NUM_CLASSES
from ssl_seg.data.io import DataError, save_jpg, save_json, save_npy

MODES = ("white", "fluorescence")
# Share of white-light scenes when the mode is left to chance.
WHITE_LIGHT_SHARE = 0.65
# How the labeled scenes' modes are drawn: by chance like the others, or alternating (white first), so that
# a few labeled scenes still show both lights (a draw of 4 or 8 can leave one out: experiments/RESULTS.md).
LABELED_MODES = ("random", "alternate")
# How folders were drawn before synth.json held a key (or before it existed).
_UNRECORDED = {"magnification": 1.0, "labeled_modes": "random"}
# Sizes below are written for this image size (height, width) and scaled with the image.
REFERENCE_SIZE = (256, 320)
MIN_SIDE = 32
JPEG_QUALITY = 90
SPLIT_CODES = {"labeled": 1, "unlabeled": 2, "test": 3}
ID_ALPHABET = np.array(list("abcdefghijklmnopqrstuvwxyz0123456789"))
ID_LENGTH = 6

BACKGROUND, INERTINITE, VITRINITE, LIPTINITE = range(NUM_CLASSES)

# Materials: what a pixel is made of, which decides how it looks in each mode.
N_MATERIALS = 11
(MATRIX, GRAIN, RESIN, HOLE, PYRITE, BUBBLE_RIM,
 VITRINITE_M, INERTINITE_M, LUMEN, LIPTINITE_M, BITUMEN) = range(N_MATERIALS)


@dataclass
class _Scene:
    """Per-pixel maps a scene is drawn into before it is shaded."""

    height: int
    width: int
    scale: float  # pixels per reference pixel (image size x magnification)
    bedding: float  # radians; elongated bodies lie along it
    bedding_spread: float  # radians of scatter around the bedding direction
    material: np.ndarray = field(init=False)
    tone: np.ndarray = field(init=False)  # per-particle brightness factor
    tint: np.ndarray = field(init=False)  # per-particle hue shift (+ warmer, - cooler)
    mask: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.material = np.full((self.height, self.width), MATRIX, np.uint8)
        self.tone = np.ones((self.height, self.width), np.float32)
        self.tint = np.zeros((self.height, self.width), np.float32)
        self.mask = np.zeros((self.height, self.width), np.uint8)

    def put(self, rr: np.ndarray, cc: np.ndarray, material: int, label: int | None,
            tone: float = 1.0, tint: float = 0.0) -> int:
        """Paint pixels; label None keeps the labels underneath. Returns the pixel count."""
        self.material[rr, cc] = material
        self.tone[rr, cc] = tone
        self.tint[rr, cc] = tint
        if label is not None:
            self.mask[rr, cc] = label
        return len(rr)


# ----------------------------------------------------------------------------- noise helpers


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cell: float) -> np.ndarray:
    """Noise of std about 0.5 whose blobs are about `cell` pixels wide (upsampled random grid)."""
    if cell <= 1.0:
        return (0.5 * rng.standard_normal((height, width))).astype(np.float32)
    grid_h, grid_w = int(np.ceil(height / cell)) + 3, int(np.ceil(width / cell)) + 3
    grid = rng.standard_normal((grid_h, grid_w)).astype(np.float32)
    big = Image.fromarray(grid).resize((int(grid_w * cell), int(grid_h * cell)), Image.BICUBIC)
    top, left = (int(v) for v in rng.integers(0, max(1, int(cell)), 2))
    return np.asarray(big)[top : top + height, left : left + width]


def _fbm(rng: np.random.Generator, height: int, width: int, cell: float, octaves: int = 3) -> np.ndarray:
    """Fractal noise: a few octaves of smooth noise, coarse first."""
    total = np.zeros((height, width), np.float32)
    for octave in range(octaves):
        total += _smooth_noise(rng, height, width, cell / 2**octave) * 0.55**octave
    return total


def _noise_1d(rng: np.random.Generator, n: int, knots: int, periodic: bool = False) -> np.ndarray:
    """Smooth 1-D noise (std ~0.7) sampled at n points, eased between `knots` random control values."""
    values = rng.standard_normal(knots + 1)
    if periodic:
        values[-1] = values[0]
    position = np.linspace(0, knots, n)
    left = np.minimum(position.astype(np.int64), knots - 1)
    t = position - left
    t = t * t * (3 - 2 * t)  # smoothstep: no corners at the knots
    return values[left] + (values[left + 1] - values[left]) * t


# ----------------------------------------------------------------------------- shapes


def _to_image(center: tuple[float, float], angle: float, along: np.ndarray, across: np.ndarray):
    """Local (along, across) coordinates of a body at `angle` -> image (rows, cols)."""
    direction_r, direction_c = -np.sin(angle), np.cos(angle)
    rows = center[0] + along * direction_r + across * direction_c
    cols = center[1] + along * direction_c - across * direction_r
    return rows, cols


def _lens(rng: np.random.Generator, center, length: float, thickness: float, angle: float,
          taper: float = 0.8, wobble: float = 0.08, roughness: float = 0.15):
    """Outline of a lens or band: a bent centreline with a tapering, ragged thickness."""
    n = int(np.clip(length / 1.5, 16, 160))
    s = np.linspace(0.0, 1.0, n)
    along = (s - 0.5) * length
    bend = wobble * length * _noise_1d(rng, n, 3)
    profile = np.sin(np.pi * np.clip(s, 1e-3, 1 - 1e-3)) ** taper
    knots = max(2, n // 6)
    upper = bend + 0.5 * thickness * profile * np.clip(1 + roughness * _noise_1d(rng, n, knots), 0.2, None)
    lower = bend - 0.5 * thickness * profile * np.clip(1 + roughness * _noise_1d(rng, n, knots), 0.2, None)
    return _to_image(center, angle, np.concatenate([along, along[::-1]]), np.concatenate([upper, lower[::-1]]))


def _blob(rng: np.random.Generator, center, radius: float, elongation: float, angle: float,
          roughness: float = 0.2, vertices: int = 24):
    """Outline of a rounded irregular body (roughness 0 = ellipse)."""
    theta = np.linspace(0, 2 * np.pi, vertices, endpoint=False)
    radii = radius * np.clip(1 + roughness * _noise_1d(rng, vertices, max(3, vertices // 4), periodic=True), 0.3, None)
    return _to_image(center, angle, radii * np.cos(theta) * elongation, radii * np.sin(theta))


def _shard(rng: np.random.Generator, center, radius: float, elongation: float, angle: float):
    """Outline of a sharp angular fragment: few vertices at irregular angles and radii."""
    vertices = int(rng.integers(3, 8))
    theta = np.sort(rng.uniform(0, 2 * np.pi, vertices))
    radii = radius * rng.uniform(0.45, 1.0, vertices)
    return _to_image(center, angle, radii * np.cos(theta) * elongation, radii * np.sin(theta))


def _fill(outline, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pixels inside a polygon outline, clipped to the image (PIL rasterises on a small canvas)."""
    rows, cols = outline
    top, bottom = max(int(np.floor(rows.min())), 0), min(int(np.ceil(rows.max())) + 1, shape[0])
    left, right = max(int(np.floor(cols.min())), 0), min(int(np.ceil(cols.max())) + 1, shape[1])
    if bottom <= top or right <= left:
        return np.zeros(0, np.intp), np.zeros(0, np.intp)
    canvas = Image.new("L", (right - left, bottom - top), 0)
    ImageDraw.Draw(canvas).polygon(list(zip((cols - left).tolist(), (rows - top).tolist())), fill=1)
    rr, cc = np.nonzero(np.asarray(canvas))
    return rr + top, cc + left


# ----------------------------------------------------------------------------- scene content


def _random_point(rng: np.random.Generator, scene: _Scene, margin: float = 0.05) -> tuple[float, float]:
    return (rng.uniform(-margin, 1 + margin) * scene.height, rng.uniform(-margin, 1 + margin) * scene.width)


def _body_angle(rng: np.random.Generator, scene: _Scene) -> float:
    return scene.bedding + rng.normal(0.0, scene.bedding_spread)


def _lay_matrix(rng: np.random.Generator, scene: _Scene) -> None:
    """Silt grains (quartz, carbonate, dark lithics) scattered through the clay matrix."""
    u = scene.scale
    density = rng.uniform(0.0015, 0.009)  # grains per reference pixel
    count = int(density * scene.height * scene.width / u**2)
    # All grains go on one canvas; each carries a code into a table of (tone, tint).
    bright_share = rng.uniform(0.1, 0.6)
    tones = np.where(rng.random(256) < bright_share, rng.uniform(1.1, 1.45, 256), rng.uniform(0.55, 0.95, 256))
    tints = rng.uniform(-0.5, 0.5, 256)
    canvas = Image.new("L", (scene.width, scene.height), 0)
    painter = ImageDraw.Draw(canvas)
    theta = np.linspace(0, 2 * np.pi, 8, endpoint=False)
    centres = rng.uniform(0, 1, (count, 2)) * (scene.height, scene.width)
    radii = np.maximum(u * rng.lognormal(np.log(1.6), 0.45, count), 0.7)
    squash = rng.uniform(0.5, 1.0, count)
    angles = rng.uniform(0, np.pi, count)
    codes = rng.integers(1, 256, count)
    for (r, c), radius, flat, angle, code in zip(centres, radii, squash, angles, codes):
        along, across = radius * np.cos(theta), flat * radius * np.sin(theta)
        rows = r + along * np.sin(angle) + across * np.cos(angle)
        cols = c + along * np.cos(angle) - across * np.sin(angle)
        painter.polygon(list(zip(cols.tolist(), rows.tolist())), fill=int(code))
    code_map = np.asarray(canvas)
    grain = code_map > 0
    scene.material[grain] = GRAIN
    scene.tone[grain] = tones[code_map[grain]]
    scene.tint[grain] = tints[code_map[grain]]


def _vitrinite_body(rng: np.random.Generator, scene: _Scene) -> int:
    """One vitrinite band, lens or clast (with shrinkage cracks); returns the pixels painted."""
    u = scene.scale
    shape = (scene.height, scene.width)
    if rng.random() < 0.55:  # band
        length = u * rng.uniform(40, 260)
        outline = _lens(rng, _random_point(rng, scene), length, u * rng.uniform(3, 22), _body_angle(rng, scene),
                        taper=rng.uniform(0.15, 0.5), wobble=rng.uniform(0.02, 0.1), roughness=rng.uniform(0.05, 0.3))
    elif rng.random() < 0.6:  # lens
        outline = _lens(rng, _random_point(rng, scene), u * rng.uniform(12, 70), u * rng.uniform(4, 18),
                        _body_angle(rng, scene), taper=rng.uniform(0.5, 1.0), wobble=rng.uniform(0.0, 0.12))
    else:  # equant clast with rounded or broken outline
        radius = u * rng.uniform(5, 22)
        if rng.random() < 0.5:
            outline = _blob(rng, _random_point(rng, scene), radius, rng.uniform(1.0, 2.0),
                            _body_angle(rng, scene), 0.25)
        else:
            outline = _shard(rng, _random_point(rng, scene), radius, rng.uniform(1.0, 1.8), rng.uniform(0, np.pi))
    rr, cc = _fill(outline, shape)
    if len(rr) == 0:
        return 0
    added = scene.put(rr, cc, VITRINITE_M, VITRINITE, tone=rng.normal(1.0, 0.05), tint=rng.normal(0, 0.1))
    # Shrinkage cracks: thin dark lines that stay inside the particle (still vitrinite).
    for _ in range(int(rng.poisson(0.8 * np.sqrt(len(rr)) / (12 * u)))):
        i = int(rng.integers(len(rr)))
        angle = rng.uniform(0, np.pi)
        half = u * rng.uniform(3, 15)
        lr, lc = draw.line(int(rr[i] - half * np.sin(angle)), int(cc[i] + half * np.cos(angle)),
                           int(rr[i] + half * np.sin(angle)), int(cc[i] - half * np.cos(angle)))
        keep = (lr >= 0) & (lr < scene.height) & (lc >= 0) & (lc < scene.width)
        lr, lc = lr[keep], lc[keep]
        inside = scene.material[lr, lc] == VITRINITE_M
        scene.tone[lr[inside], lc[inside]] = rng.uniform(0.45, 0.8)
    return added


def _cell_lumens(rng: np.random.Generator, rr: np.ndarray, cc: np.ndarray, angle: float, spacing: float) -> np.ndarray:
    """Which pixels of a fusinite particle are cell lumens: a staggered lattice of ellipses."""
    r0, c0 = rr.mean(), cc.mean()
    along = (rr - r0) * -np.sin(angle) + (cc - c0) * np.cos(angle)
    across = (rr - r0) * np.cos(angle) + (cc - c0) * np.sin(angle)
    period_along, period_across = spacing * rng.uniform(1.0, 2.6), spacing
    row = np.floor(across / period_across)
    shifted = along / period_along + 0.5 * (row % 2)
    col = np.floor(shifted)
    frac_along, frac_across = shifted - col - 0.5, across / period_across - row - 0.5
    open_fraction = rng.uniform(0.45, 0.8)  # lumen size relative to the cell
    # Some cells crushed or filled: a random table indexed by the cell number.
    table = rng.random(997)
    open_cell = table[((row * 31 + col * 17) % 997).astype(np.int64)] < rng.uniform(0.6, 1.0)
    ellipse = (frac_along / open_fraction) ** 2 + (frac_across / open_fraction) ** 2 < 0.25
    return ellipse & open_cell


def _inertinite_body(rng: np.random.Generator, scene: _Scene) -> int:
    """One fusinite with cell lumens, a swarm of fragments or a sharp shard; returns pixels painted."""
    u = scene.scale
    shape = (scene.height, scene.width)
    tone = rng.uniform(0.88, 1.2)  # semifusinite (dim) .. fusinite (bright)
    kind = rng.choice(["fusinite", "fragments", "shard"], p=[0.4, 0.3, 0.3])
    if kind == "fusinite":
        angle = _body_angle(rng, scene)
        if rng.random() < 0.6:
            outline = _lens(rng, _random_point(rng, scene), u * rng.uniform(25, 110), u * rng.uniform(10, 40), angle,
                            taper=rng.uniform(0.2, 0.6), wobble=0.04, roughness=0.25)
        else:
            outline = _shard(rng, _random_point(rng, scene), u * rng.uniform(10, 35), rng.uniform(1.2, 2.2), angle)
        rr, cc = _fill(outline, shape)
        if len(rr) == 0:
            return 0
        added = scene.put(rr, cc, INERTINITE_M, INERTINITE, tone=tone, tint=rng.normal(-0.1, 0.1))
        lumen = _cell_lumens(rng, rr, cc, angle, u * rng.uniform(2.5, 7.0))
        scene.material[rr[lumen], cc[lumen]] = LUMEN
        scene.tone[rr[lumen], cc[lumen]] = rng.uniform(0.7, 1.3)
        return added
    if kind == "fragments":  # inertodetrinite: a swarm of small sharp grains
        center = _random_point(rng, scene)
        spread = u * rng.uniform(6, 30)
        added = 0
        for _ in range(int(rng.integers(3, 14))):
            point = (center[0] + rng.normal(0, spread), center[1] + rng.normal(0, spread))
            outline = _shard(rng, point, u * rng.uniform(1.5, 6), rng.uniform(1.0, 2.0), rng.uniform(0, np.pi))
            rr, cc = _fill(outline, shape)
            added += scene.put(rr, cc, INERTINITE_M, INERTINITE, tone=tone * rng.uniform(0.9, 1.1),
                               tint=rng.normal(-0.1, 0.1))
        return added
    rr, cc = _fill(_shard(rng, _random_point(rng, scene), u * rng.uniform(5, 22), rng.uniform(1.0, 2.2),
                          rng.uniform(0, np.pi)), shape)
    return scene.put(rr, cc, INERTINITE_M, INERTINITE, tone=tone, tint=rng.normal(-0.1, 0.1))


def _liptinite_body(rng: np.random.Generator, scene: _Scene, large: bool = False) -> int:
    """One liptinite stringer, spore or resinite body (or a large band); returns pixels painted."""
    u = scene.scale
    shape = (scene.height, scene.width)
    tone, tint = rng.uniform(0.6, 1.25), rng.normal(0.0, 0.25)
    kind = "band" if large else rng.choice(["stringer", "spore", "resinite"], p=[0.55, 0.32, 0.13])
    if kind == "band":  # lamalginite / cutinite sheet: a long thick liptinite band
        outline = _lens(rng, _random_point(rng, scene), u * rng.uniform(70, 300), u * rng.uniform(5, 22),
                        _body_angle(rng, scene), taper=rng.uniform(0.2, 0.7), wobble=rng.uniform(0.02, 0.08),
                        roughness=0.3)
        rr, cc = _fill(outline, shape)
        return scene.put(rr, cc, LIPTINITE_M, LIPTINITE, tone=tone, tint=tint)
    if kind == "stringer":  # alginite / thin cutinite: thin bodies along the bedding
        outline = _lens(rng, _random_point(rng, scene), u * rng.uniform(12, 80), max(1.5, u * rng.uniform(1.5, 5.0)),
                        _body_angle(rng, scene), taper=rng.uniform(0.4, 1.0), wobble=rng.uniform(0.0, 0.06),
                        roughness=0.3)
        rr, cc = _fill(outline, shape)
        return scene.put(rr, cc, LIPTINITE_M, LIPTINITE, tone=tone, tint=tint)
    if kind == "spore":  # flattened spore: a lens whose collapsed cavity shows as a darker seam
        angle = _body_angle(rng, scene)
        center = _random_point(rng, scene)
        length, thickness = u * rng.uniform(8, 35), max(2.0, u * rng.uniform(2.5, 7.0))
        rr, cc = _fill(_lens(rng, center, length, thickness, angle, taper=0.6, wobble=0.06, roughness=0.1), shape)
        added = scene.put(rr, cc, LIPTINITE_M, LIPTINITE, tone=tone, tint=tint)
        seam_outline = _lens(rng, center, 0.8 * length, 0.25 * thickness, angle, taper=0.8, wobble=0.0, roughness=0.0)
        sr, sc = _fill(seam_outline, shape)
        seam = scene.material[sr, sc] == LIPTINITE_M
        scene.tone[sr[seam], sc[seam]] *= 0.6
        return added
    outline = _blob(rng, _random_point(rng, scene), u * rng.uniform(2.5, 9), rng.uniform(1.0, 1.8),
                    _body_angle(rng, scene), 0.15)
    rr, cc = _fill(outline, shape)
    return scene.put(rr, cc, LIPTINITE_M, LIPTINITE, tone=tone, tint=tint)


_BODY_DRAWERS = {VITRINITE: _vitrinite_body, INERTINITE: _inertinite_body, LIPTINITE: _liptinite_body}


def _maceral_targets(rng: np.random.Generator, mode: str) -> dict[int, float]:
    """Area fraction of each maceral in this scene: skewed, often one dominant group."""
    kinds = ["vitrinite", "inertinite", "liptinite", "mixed", "barren"]
    # Fluorescence fields are mostly picked to show liptinite (as in Stranger Sections 2).
    weights = [0.35, 0.17, 0.13, 0.27, 0.08] if mode == "white" else [0.15, 0.07, 0.5, 0.22, 0.06]
    kind = rng.choice(kinds, p=weights)
    total = rng.uniform(0.05, 0.24)
    if kind == "barren":
        shares = {VITRINITE: 0.5, INERTINITE: 0.3, LIPTINITE: 0.2}
        total = rng.uniform(0.004, 0.02)
    elif kind == "mixed":
        share = rng.dirichlet([4.0, 1.5, 0.8])
        shares = {VITRINITE: share[0], INERTINITE: share[1], LIPTINITE: share[2]}
    else:
        dominant = {"vitrinite": VITRINITE, "inertinite": INERTINITE, "liptinite": LIPTINITE}[kind]
        main = rng.uniform(0.7, 0.95)
        rest = rng.dirichlet([1.5, 1.0])
        others = [c for c in (VITRINITE, INERTINITE, LIPTINITE) if c != dominant]
        shares = {dominant: main, others[0]: (1 - main) * rest[0], others[1]: (1 - main) * rest[1]}
        if dominant == LIPTINITE:  # thin bodies: a liptinite-rich field still covers little area
            total *= 0.3
    return {c: total * share for c, share in shares.items()}


def _lay_macerals(rng: np.random.Generator, scene: _Scene, mode: str) -> None:
    """Paint vitrinite, then inertinite, then liptinite bodies until each class's area target is met."""
    area = scene.height * scene.width
    targets = _maceral_targets(rng, mode)
    for label in (VITRINITE, INERTINITE, LIPTINITE):
        painted, attempts = 0, 0
        wanted = targets[label] * area
        if label == LIPTINITE:
            # A few liptinite stringers show up in most scenes whatever their composition.
            if rng.random() < 0.85:
                wanted = max(wanted, 60 * scene.scale**2)
            # Liptinite-rich fields often hold one or two big bands besides the small bodies.
            for _ in range(int(rng.poisson(wanted / (0.03 * area)))):
                painted += _liptinite_body(rng, scene, large=True)
        while painted < wanted and attempts < 300:
            painted += _BODY_DRAWERS[label](rng, scene)
            attempts += 1


def _lay_confusers(rng: np.random.Generator, scene: _Scene) -> None:
    """Background objects that look like macerals: holes, pyrite, diffuse bitumen."""
    u = scene.scale
    shape = (scene.height, scene.width)
    # Holes and plucked pits: dark like liptinite, some elongated along the bedding.
    for _ in range(int(rng.poisson(rng.uniform(3, 30)))):
        outline = _blob(rng, _random_point(rng, scene), u * rng.lognormal(np.log(2.5), 0.6), rng.uniform(1.0, 3.0),
                        _body_angle(rng, scene), 0.35, vertices=12)
        rr, cc = _fill(outline, shape)
        scene.put(rr, cc, HOLE, BACKGROUND, tone=rng.uniform(0.6, 1.3))
    # Pyrite: framboid clusters and small cubes, often sitting in organic matter.
    for _ in range(int(rng.poisson(rng.uniform(0, 12)))):
        center = _random_point(rng, scene)
        if rng.random() < 0.6:
            radius = u * rng.uniform(1.5, 7)
            for _ in range(int(np.clip(radius**2 / (0.6 * u**2 + 0.2), 3, 60))):
                rho, phi = radius * np.sqrt(rng.random()), rng.uniform(0, 2 * np.pi)
                micro = max(0.6, u * rng.uniform(0.5, 1.3))
                rr, cc = draw.disk((center[0] + rho * np.sin(phi), center[1] + rho * np.cos(phi)), micro, shape=shape)
                scene.put(rr, cc, PYRITE, BACKGROUND, tone=rng.uniform(0.85, 1.1))
        else:
            for _ in range(int(rng.integers(1, 6))):
                side = max(1.0, u * rng.uniform(1.0, 4.5))
                point = (center[0] + rng.normal(0, 6 * u), center[1] + rng.normal(0, 6 * u))
                theta = rng.uniform(0, np.pi / 2) + np.array([0.25, 0.75, 1.25, 1.75]) * np.pi
                rr, cc = _fill((point[0] + side * np.sin(theta), point[1] + side * np.cos(theta)), shape)
                scene.put(rr, cc, PYRITE, BACKGROUND, tone=rng.uniform(0.85, 1.1))
    # Amorphous bitumen / organic-rich clay: soft patches, unlabeled (fluoresces in UV).
    for _ in range(int(rng.poisson(1.5))):
        outline = _blob(rng, _random_point(rng, scene), u * rng.uniform(8, 35), rng.uniform(1.2, 3.0),
                        _body_angle(rng, scene), 0.4, vertices=20)
        rr, cc = _fill(outline, shape)
        keep = scene.material[rr, cc] == MATRIX
        scene.put(rr[keep], cc[keep], BITUMEN, None, tone=rng.uniform(0.6, 1.2))


def _lay_resin(rng: np.random.Generator, scene: _Scene, rows: np.ndarray, cols: np.ndarray) -> None:
    """Mounting resin: beyond the edge of the rock chip and in cracks; may hold bubbles."""
    u = scene.scale
    shape = (scene.height, scene.width)
    resin = np.zeros(shape, bool)
    if rng.random() < 0.3:  # chip edge: a ragged line, resin on one side
        normal = rng.uniform(0, 2 * np.pi)
        nr, nc = np.sin(normal), np.cos(normal)
        distance = (rows - scene.height / 2) * nr + (cols - scene.width / 2) * nc  # broadcast HxW
        tangent_pos = (rows - scene.height / 2) * nc - (cols - scene.width / 2) * nr
        extent = 0.5 * np.hypot(scene.height, scene.width)
        offset = rng.uniform(0.15, 0.45) * extent
        n = 256
        ragged = _noise_1d(rng, n, 12) * u * rng.uniform(3, 12) + _noise_1d(rng, n, 48) * u * 2
        edge = np.interp(tangent_pos, np.linspace(-extent, extent, n), ragged)
        resin |= distance + edge > offset
    for _ in range(int(rng.poisson(0.4))):  # resin-filled cracks across the field
        outline = _lens(rng, _random_point(rng, scene, 0.0), u * rng.uniform(150, 450),
                        max(1.2, u * rng.uniform(1.0, 5.0)),
                        rng.uniform(0, np.pi), taper=0.2, wobble=rng.uniform(0.03, 0.1), roughness=0.4)
        rr, cc = _fill(outline, shape)
        resin[rr, cc] = True
    if not resin.any():
        return
    scene.material[resin] = RESIN
    scene.mask[resin] = BACKGROUND
    scene.tone[resin] = 1.0
    for _ in range(int(rng.poisson(2.0))):  # bubbles: a dark rim, only where resin is
        center = _random_point(rng, scene, 0.0)
        if not resin[int(min(center[0], scene.height - 1)), int(min(center[1], scene.width - 1))]:
            continue
        radius = u * rng.uniform(3, 15)
        rr, cc = draw.disk(center, radius, shape=shape)
        inside = resin[rr, cc]
        rr, cc = rr[inside], cc[inside]
        ring = np.hypot(rr - center[0], cc - center[1]) > radius - max(1.0, 0.2 * radius)
        scene.material[rr[ring], cc[ring]] = BUBBLE_RIM
        scene.tone[rr[~ring], cc[~ring]] = rng.uniform(1.05, 1.4)


# ----------------------------------------------------------------------------- shading


def _white_light_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Base RGB reflectance (0..1) and texture strength per material for one white-light image."""
    matrix = rng.uniform(0.18, 0.28)
    vitrinite = matrix * rng.uniform(1.5, 2.1)
    inertinite = min(vitrinite * rng.uniform(1.3, 1.75), 0.9)
    liptinite = matrix * rng.uniform(0.45, 0.8)
    colours = np.zeros((N_MATERIALS, 3), np.float32)
    texture = np.zeros(N_MATERIALS, np.float32)
    brownish = np.array([1.0, 0.93, 0.82]) * rng.uniform(0.95, 1.05, 3)
    colours[MATRIX] = matrix * brownish
    colours[GRAIN] = matrix * brownish * np.array([1.0, 1.02, 1.06])
    colours[BITUMEN] = matrix * rng.uniform(0.75, 0.95) * brownish
    colours[RESIN] = matrix * rng.uniform(0.3, 0.65) * np.array([0.95, 0.98, 1.0])
    colours[HOLE] = matrix * rng.uniform(0.08, 0.4) * brownish
    colours[BUBBLE_RIM] = colours[RESIN] * 0.4
    colours[PYRITE] = rng.uniform(0.8, 1.05) * np.array([1.0, 0.96, 0.74])
    colours[VITRINITE_M] = vitrinite * np.array([1.0, 0.98, 0.95])
    colours[INERTINITE_M] = inertinite * np.array([0.98, 1.0, 1.02])
    colours[LUMEN] = matrix * rng.uniform(0.3, 0.8) * brownish
    colours[LIPTINITE_M] = liptinite * np.array([1.0, 0.9, 0.78])
    texture[[MATRIX, GRAIN, BITUMEN]] = rng.uniform(0.1, 0.25)
    texture[[VITRINITE_M, RESIN]] = rng.uniform(0.02, 0.06)
    texture[[INERTINITE_M, LIPTINITE_M, HOLE, LUMEN, PYRITE, BUBBLE_RIM]] = rng.uniform(0.05, 0.12)
    return colours, texture


def _fluorescence_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Base RGB emission (0..1) and texture strength per material for one fluorescence image."""
    colours = np.zeros((N_MATERIALS, 3), np.float32)
    texture = np.zeros(N_MATERIALS, np.float32)
    maturity = rng.uniform(0, 1)  # immature liptinite glows greenish yellow, mature orange to brown
    hues = np.array([[0.85, 1.0, 0.3], [1.0, 0.85, 0.15], [1.0, 0.55, 0.08], [0.85, 0.35, 0.05]])
    lip_hue = np.array([np.interp(maturity * 3, np.arange(4), hues[:, k]) for k in range(3)])
    matrix_hue = np.array([0.75, 0.85, 0.3]) if rng.random() < 0.5 else np.array([1.0, 0.7, 0.3])
    matrix = rng.uniform(0.05, 0.16)
    colours[MATRIX] = matrix * matrix_hue
    colours[GRAIN] = matrix * matrix_hue * rng.uniform(0.8, 1.5)
    colours[BITUMEN] = rng.uniform(0.08, 0.28) * lip_hue * np.array([1.0, 0.85, 0.8])  # diffuse, unlabeled glow
    # Vitrinite: dull brown, a little brighter or darker than the matrix glow but rarely equal.
    vitrinite = matrix * (rng.uniform(0.2, 0.55) if rng.random() < 0.6 else rng.uniform(1.5, 2.4))
    colours[VITRINITE_M] = vitrinite * np.array([1.0, 0.62, 0.3])
    colours[INERTINITE_M] = rng.uniform(0.005, 0.03) * np.array([1.0, 0.9, 0.7])
    colours[LUMEN] = colours[INERTINITE_M] * 1.5
    colours[LIPTINITE_M] = rng.uniform(0.45, 1.0) * lip_hue
    resin_glows = rng.random() < 0.5
    colours[RESIN] = (rng.uniform(0.5, 1.0) if resin_glows else rng.uniform(0.02, 0.08)) * np.array([0.9, 1.0, 0.3])
    colours[BUBBLE_RIM] = colours[RESIN] * 0.3
    colours[HOLE] = matrix * rng.uniform(0.05, 0.4) * matrix_hue
    colours[PYRITE] = rng.uniform(0.0, 0.02)
    texture[[MATRIX, GRAIN, BITUMEN]] = rng.uniform(0.2, 0.45)
    texture[[LIPTINITE_M, VITRINITE_M]] = rng.uniform(0.08, 0.2)
    texture[[INERTINITE_M, LUMEN, HOLE, PYRITE, RESIN, BUBBLE_RIM]] = 0.1
    return colours, texture


def _shade(rng: np.random.Generator, scene: _Scene, mode: str, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Turn the material maps into a linear RGB picture (before optics and sensor)."""
    colours, texture = _white_light_colours(rng) if mode == "white" else _fluorescence_colours(rng)
    u = scene.scale
    h, w = scene.height, scene.width
    fine = rng.standard_normal((h, w), dtype=np.float32)
    if u > 0.7:  # keep the speckle about one reference pixel wide at any image size
        fine = ndimage.uniform_filter(fine, size=int(round(1.5 * u)) | 1) * np.float32(1.5 * u)
    grain_noise = 0.5 * fine + 0.7 * _fbm(rng, h, w, 6 * u, 2)
    # Lamination: brightness varies across the bedding in the matrix.
    across = (rows - h / 2) * np.cos(scene.bedding) + (cols - w / 2) * np.sin(scene.bedding)
    extent = 0.5 * np.hypot(h, w) + 2
    laminae = np.interp(across, np.linspace(-extent, extent, 512), _noise_1d(rng, 512, int(rng.integers(8, 60))))
    matrix_like = np.isin(scene.material, (MATRIX, GRAIN, BITUMEN))
    brightness = scene.tone * (1 + texture[scene.material] * grain_noise)
    brightness += matrix_like * (rng.uniform(0.02, 0.12) * laminae).astype(np.float32)
    image = colours[scene.material] * brightness[..., None]
    # Per-particle hue shifts (warmer or cooler).
    tint = scene.tint * 0.12
    image[..., 0] *= 1 + tint
    image[..., 2] *= 1 - tint
    if mode == "fluorescence":
        # Glow: bright emitters bleed light into their surroundings (computed at low resolution).
        small = max(1, int(round(4 * u)))
        low = image[::small, ::small]
        halo = ndimage.gaussian_filter(low, sigma=(rng.uniform(1.0, 3.0), rng.uniform(1.0, 3.0), 0))
        halo_full = np.stack(
            [np.asarray(Image.fromarray(halo[..., k]).resize((w, h), Image.BILINEAR)) for k in range(3)], -1)
        image += rng.uniform(0.15, 0.5) * halo_full
    return image


def _polishing_scratches(rng: np.random.Generator, scene: _Scene, image: np.ndarray, mode: str) -> None:
    """Thin straight lines across everything, mostly in one polishing direction."""
    count = int(rng.poisson(2.5 if mode == "white" else 1.0))
    direction = rng.uniform(0, np.pi)
    h, w = scene.height, scene.width
    for _ in range(count):
        angle = direction + rng.normal(0, 0.15)
        r, c = _random_point(rng, scene, 0.0)
        reach = h + w
        r0, c0 = r - reach * np.sin(angle), c - reach * np.cos(angle)
        r1, c1 = r + reach * np.sin(angle), c + reach * np.cos(angle)
        lr, lc, weight = draw.line_aa(int(r0), int(c0), int(r1), int(c1))
        keep = (lr >= 0) & (lr < h) & (lc >= 0) & (lc < w)
        lr, lc, weight = lr[keep], lc[keep], weight[keep]
        strength = rng.uniform(-0.45, 0.25)  # mostly darker, sometimes a bright relief edge
        thickness = max(1, int(round(scene.scale * rng.uniform(0.6, 1.5))))
        steep = abs(np.sin(angle)) > abs(np.cos(angle))  # thicken across the line, not along it
        for offset in range(thickness):
            rr = lr if steep else np.clip(lr + offset, 0, h - 1)
            cc = np.clip(lc + offset, 0, w - 1) if steep else lc
            image[rr, cc] *= (1 + strength * weight)[:, None]


def _field_stop(rng: np.random.Generator, scene: _Scene, rows: np.ndarray, cols: np.ndarray) -> np.ndarray | None:
    """Outside of a rotated (or round) camera field: black, labelled background. None if no corners."""
    draw_kind = rng.random()
    h, w = scene.height, scene.width
    y, x = rows - h / 2, cols - w / 2
    if draw_kind < 0.2:
        angle = rng.uniform(0.04, 0.25) * rng.choice([-1, 1])
        grow = rng.uniform(1.0, 1.12)
        along = x * np.cos(angle) + y * np.sin(angle)
        across = -x * np.sin(angle) + y * np.cos(angle)
        return (np.abs(along) > grow * w / 2) | (np.abs(across) > grow * h / 2)
    if draw_kind < 0.28:
        return np.hypot(y, x) > rng.uniform(0.45, 0.62) * np.hypot(h, w)
    return None


def _optics(rng: np.random.Generator, image: np.ndarray, scene: _Scene, mode: str,
            rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Illumination, exposure, colour cast, soft focus, sensor noise -> uint8 RGB."""
    h, w = scene.height, scene.width
    diagonal = np.hypot(h, w)
    centre_r, centre_c = rng.normal(0.5, 0.15) * h, rng.normal(0.5, 0.15) * w
    radius2 = ((rows - centre_r) ** 2 + (cols - centre_c) ** 2) / (0.5 * diagonal) ** 2
    gradient = (rows / h - 0.5) * rng.normal(0, 0.2) + (cols / w - 0.5) * rng.normal(0, 0.2)
    illumination = (1 - rng.uniform(0.0, 0.4) * radius2 + gradient).astype(np.float32)
    illumination += 0.08 * _smooth_noise(rng, h, w, diagonal / 4)
    if mode == "white":
        cast = np.array([1 + rng.uniform(0.0, 0.18), 1.0, 1 - rng.uniform(-0.05, 0.3)])
        gain = rng.lognormal(0.0, 0.15)
    else:
        cast = np.array([1 + rng.uniform(0.0, 0.1), 1.0, 1 - rng.uniform(0.0, 0.4)])
        gain = rng.lognormal(0.1, 0.3)
    image *= (illumination[..., None] * (gain * cast).astype(np.float32))
    image = np.clip(image, 0, 1.2) ** np.float32(1 / rng.uniform(0.85, 1.18))
    picture = Image.fromarray((np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8))
    # Soft focus, stronger in some regions than others.
    sharp_sigma = rng.uniform(0.3, 1.4) * scene.scale + (0.5 if mode == "fluorescence" else 0.0)
    soft = np.asarray(picture.filter(ImageFilter.GaussianBlur(sharp_sigma)), np.float32)
    if rng.random() < 0.5:
        defocus = sharp_sigma + rng.uniform(0.5, 2.5) * scene.scale
        blurred = np.asarray(picture.filter(ImageFilter.GaussianBlur(defocus)), np.float32)
        weight = np.clip(0.5 + 1.5 * _smooth_noise(rng, h, w, diagonal / 3), 0, 1)[..., None]
        soft = soft + weight * (blurred - soft)
    noise_level = rng.uniform(1.0, 6.0)
    soft += rng.standard_normal(soft.shape, dtype=np.float32) * (noise_level * np.sqrt(soft / 255 + 0.05))
    return np.clip(soft + 0.5, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- public API


def _check_size(height: int, width: int) -> None:
    if int(height) != height or int(width) != width or height < MIN_SIDE or width < MIN_SIDE:
        raise ValueError(
            f"synthetic image size must be two integers >= {MIN_SIDE} (height, width), got {(height, width)}")


def render_scene(rng: np.random.Generator, height: int, width: int,
                 mode: str | None = None, magnification: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Draw one procedural kerogen scene.

    Returns (image, mask): image uint8 HxWx3 RGB, mask uint8 HxW with 0 background,
    1 inertinite, 2 vitrinite, 3 liptinite. `mode` is "white" (reflected white light) or
    "fluorescence"; None picks one at random (about 65% white). `magnification` scales every
    body and texture in pixels (2: the field of view of an image half as wide, at the same size).
    The image carries no JPEG artefacts yet; `write_dataset` adds them by saving JPEG.
    """
    _check_size(height, width)
    height, width = int(height), int(width)
    if mode is None:
        mode = "white" if rng.random() < WHITE_LIGHT_SHARE else "fluorescence"
    if mode not in MODES:
        raise ValueError(f"unknown imaging mode {mode!r}: use one of {', '.join(MODES)}")
    size_scale = np.sqrt(height * width / (REFERENCE_SIZE[0] * REFERENCE_SIZE[1]))
    if not magnification > 0:
        raise ValueError(f"magnification must be positive, got {magnification!r}")
    scene = _Scene(height, width, scale=float(size_scale * magnification * rng.lognormal(0.0, 0.25)),
                   bedding=float(rng.uniform(0, np.pi)), bedding_spread=float(rng.choice([0.08, 0.25, 0.8])))
    rows = np.arange(height, dtype=np.float32)[:, None]
    cols = np.arange(width, dtype=np.float32)[None, :]
    _lay_matrix(rng, scene)
    _lay_macerals(rng, scene, mode)
    _lay_confusers(rng, scene)
    _lay_resin(rng, scene, rows, cols)
    image = _shade(rng, scene, mode, rows, cols)
    _polishing_scratches(rng, scene, image, mode)
    outside = _field_stop(rng, scene, rows, cols)
    if outside is not None:
        image[outside] = 0.0
        scene.mask[outside] = BACKGROUND
    return _optics(rng, image, scene, mode, rows, cols), scene.mask


def _scene_id(seed: int, split_code: int, index: int, taken: set[str]) -> str:
    """A 6-character lowercase id, a pure function of (seed, split, index) unless it collides."""
    rng = np.random.default_rng([seed, split_code, index, 1_000_003])
    while True:
        candidate = "".join(rng.choice(ID_ALPHABET, ID_LENGTH))
        if candidate not in taken:
            taken.add(candidate)
            return candidate


def _scene_mode(seed: int, split_code: int, index: int, labeled_modes: str) -> str:
    if labeled_modes == "alternate" and split_code == SPLIT_CODES["labeled"]:
        return MODES[index % len(MODES)]
    rng = np.random.default_rng([seed, split_code, index, 2_000_003])
    return "white" if rng.random() < WHITE_LIGHT_SHARE else "fluorescence"


def _existing_scene(image_path: Path, mask_path: Path | None, size: tuple[int, int]) -> np.ndarray | None:
    """Check a file pair left by an earlier run has the requested size; return its mask (if any)."""
    with Image.open(image_path) as picture:
        found = (picture.height, picture.width)
    mask = None if mask_path is None else np.load(mask_path)
    if mask is not None and mask.shape != found:
        found = mask.shape
        image_path = mask_path
    if found != size:
        raise DataError(
            f"{image_path} is {found[0]}x{found[1]} but size {size[0]}x{size[1]} was asked: "
            "write into a new folder, or rerun with the size used before"
        )
    return mask


def dataset_record(out: str | Path) -> dict | None:
    """How a procedural dataset folder was drawn (``magnification``, ``labeled_modes``); None for a new, empty
    folder. Records written before a key existed, and folders written before the record, get what they used."""
    out = Path(out)
    record = out / "synth.json"
    if record.is_file():
        found = json.loads(record.read_text())
        return {**_UNRECORDED, **found, "magnification": float(found["magnification"])}
    if any(out.glob("*/*.JPG")) or any(out.glob("train/*/*.JPG")):
        return dict(_UNRECORDED)
    return None


def dataset_magnification(out: str | Path) -> float | None:
    """The magnification a procedural dataset folder was drawn at; None for a new, empty folder."""
    record = dataset_record(out)
    return None if record is None else record["magnification"]


def _check_record(out: Path, magnification: float, labeled_modes: str) -> None:
    """Refuse to add scenes drawn another way than the folder's; record the way if the folder is new."""
    wanted = {"magnification": magnification, "labeled_modes": labeled_modes}
    found = dataset_record(out)
    for key, value in (found or {}).items():
        if value != wanted[key]:
            raise DataError(f"{out} holds scenes drawn at {key.replace('_', ' ')} {value}, not {wanted[key]}: "
                            f"write into a new folder, or rerun with the {key.replace('_', ' ')} used before")
    if not (out / "synth.json").is_file():
        save_json(out / "synth.json", wanted)


def write_dataset(out: str | Path, labeled: int, unlabeled: int, test: int,
                  size: tuple[int, int] = (256, 320), seed: int = 0, progress: bool = True,
                  unlabeled_truth: bool = False, magnification: float = 1.0, labeled_modes: str = "random") -> dict:
    """Write a procedural dataset in the Stranger Sections 2 layout and return a summary.

    Layout: ``out/train/labeled/<id>.JPG``, ``out/train/labels/<id>_gt.npy``,
    ``out/train/unlabeled/<id>.JPG``, ``out/test/<id>.JPG`` and ``out/test_answers/<id>_gt.npy``.
    Files already present are kept (each image depends only on seed, split and index), so an
    interrupted run resumes. ``out/synth.json`` records the ``magnification`` (see
    ``render_scene``) and ``labeled_modes`` (``random``, or ``alternate``: labeled scene i is lit white
    for even i, fluorescent for odd); adding scenes drawn another way is refused. ``unlabeled_truth=True`` also
    writes the masks of the unlabeled scenes to ``out/train/unlabeled_truth/`` (for diagnostics
    such as pseudo-label accuracy; training never reads them). The summary's ``scene_modes`` gives each
    scene's illumination ("white" or "fluorescence"), for scores split by mode. Example:

        >>> import tempfile
        >>> out = Path(tempfile.mkdtemp()) / "synth"
        >>> summary = write_dataset(out, labeled=4, unlabeled=8, test=2, size=(128, 160), progress=False)
        >>> summary["counts"]
        {'labeled': 4, 'unlabeled': 8, 'test': 2}
    """
    counts = {"labeled": labeled, "unlabeled": unlabeled, "test": test, "seed": seed}
    for name, count in counts.items():
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
            raise ValueError(f"synthetic dataset: {name} must be a whole number >= 0, got {count!r}")
    del counts["seed"]
    if len(tuple(size)) != 2:
        raise ValueError(f"size must be (height, width), got {size!r}")
    height, width = (int(v) for v in size)
    _check_size(height, width)
    if not magnification > 0:
        raise ValueError(f"synthetic dataset: magnification must be positive, got {magnification!r}")
    if labeled_modes not in LABELED_MODES:
        raise ValueError(f"synthetic dataset: labeled_modes must be one of {', '.join(LABELED_MODES)}, "
                         f"got {labeled_modes!r}")
    out = Path(out)
    _check_record(out, magnification, labeled_modes)
    folders = {
        "labeled": (out / "train" / "labeled", out / "train" / "labels"),
        "unlabeled": (out / "train" / "unlabeled", out / "train" / "unlabeled_truth" if unlabeled_truth else None),
        "test": (out / "test", out / "test_answers"),
    }
    for image_dir, mask_dir in folders.values():
        image_dir.mkdir(parents=True, exist_ok=True)
        if mask_dir is not None:
            mask_dir.mkdir(parents=True, exist_ok=True)

    taken: set[str] = set()
    scene_ids = {split: [_scene_id(seed, SPLIT_CODES[split], index, taken) for index in range(count)]
                 for split, count in counts.items()}
    for split, (image_dir, _) in folders.items():
        # another seed, or larger counts before, left scenes this call would not list: a mixed dataset
        wanted = set(scene_ids[split])
        others = sorted(p.name for p in image_dir.glob("*.JPG") if p.stem not in wanted)
        if others:
            raise DataError(f"{image_dir} holds {len(others)} scene(s) this call would not write (first {others[0]}), "
                            "from another --seed or larger counts: write into a new folder, or rerun with the "
                            "seed and counts used before")
    pixel_counts = np.zeros(NUM_CLASSES, np.int64)
    modes = {mode: 0 for mode in MODES}
    scene_modes: dict[str, str] = {}
    written = skipped = 0
    with tqdm(total=sum(counts.values()), desc="synth", unit="img", disable=not progress) as bar:
        for split, count in counts.items():
            code = SPLIT_CODES[split]
            image_dir, mask_dir = folders[split]
            for index in range(count):
                scene_id = scene_ids[split][index]
                mode = _scene_mode(seed, code, index, labeled_modes)
                modes[mode] += 1
                scene_modes[scene_id] = mode
                image_path = image_dir / f"{scene_id}.JPG"
                mask_path = None if mask_dir is None else mask_dir / f"{scene_id}_gt.npy"
                if image_path.exists() and (mask_path is None or mask_path.exists()):
                    mask = _existing_scene(image_path, mask_path, (height, width))
                    skipped += 1
                else:
                    image, mask = render_scene(np.random.default_rng([seed, code, index]), height, width, mode,
                                               magnification)
                    if mask_path is not None:
                        save_npy(mask_path, mask)
                    save_jpg(image_path, image, quality=JPEG_QUALITY)
                    written += 1
                if mask_path is not None and split != "unlabeled":  # class fractions of labeled + test masks
                    pixel_counts += np.bincount(mask.ravel(), minlength=NUM_CLASSES)[:NUM_CLASSES]
                bar.update(1)
    total = max(1, int(pixel_counts.sum()))
    return {
        "out": str(out),
        "size": (height, width),
        "magnification": magnification,
        "labeled_modes": labeled_modes,
        "seed": seed,
        "counts": counts,
        "written": written,
        "skipped": skipped,
        "class_fractions": {name: float(pixel_counts[k]) / total for k, name in enumerate(CLASS_NAMES)},
        "modes": modes,
        "scene_modes": scene_modes,
    }
