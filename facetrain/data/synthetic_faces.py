"""Procedural face-like synthetic identities: the default training dataset.

An :class:`Identity` fixes geometry, colours, optional features and a skin texture seed; :func:`render_face` draws
one ArcFace-aligned-like crop of it (eyes near y=0.46, x=0.34/0.66; mouth near y=0.82) with per-image pose,
expression, illumination, background, blur, noise and occlusion. Shapes are drawn directly in the posed frame.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageChops, ImageDraw

Color = tuple[int, int, int]

_TEXTURE_GRID = 10
_CIRCLE = [(math.cos(k * math.pi / 8), math.sin(k * math.pi / 8)) for k in range(16)]
_OUTLINE = np.exp(1j * np.linspace(0, 2 * np.pi, 48, endpoint=False))
_ARC = np.exp(1j * np.linspace(0, np.pi, 25))
_U7, _U13, _U25 = np.linspace(0, 1, 7), np.linspace(-1, 1, 13), np.linspace(-1, 1, 25)
_SKIN_LIGHT, _SKIN_DARK = np.array([238, 205, 180]), np.array([85, 55, 40])
_HAIR = np.array([[25, 20, 18], [70, 45, 30], [120, 80, 45], [200, 165, 100], [150, 60, 30], [160, 160, 160]])
_IRIS = np.array([[70, 40, 20], [60, 110, 170], [70, 120, 70], [110, 110, 120], [130, 95, 45]])


@dataclass(frozen=True)
class Identity:
    """All identity-specific parameters (coordinates are fractions of the image side)."""

    face_w: float  # half-width of the face ellipse
    face_h: float  # half-height of the face ellipse
    face_cy: float
    jaw: float  # taper of the lower face (0 = round, larger = narrow pointed chin)
    chin: float  # exponent < 1 squares the chin, > 1 rounds it
    skin: Color
    hair: Color
    hair_style: int  # 0 buzz cut, 1 short, 2 long, 3 bob (to the mouth)
    hairline: float
    fringe_side: float
    fringe_depth: float
    hair_volume: float
    eye_dx: float
    eye_y: float
    eye_w: float
    eye_h: float
    eye_tilt: float
    iris: Color
    brow_gap: float
    brow_thick: float
    brow_angle: float
    brow_arch: float
    brow_len: float
    nose_len: float
    nose_w: float
    mouth_y: float
    mouth_w: float
    mouth_h: float
    lips: Color
    smile: float
    glasses: int  # 0 none, 1 round, 2 rectangular
    glasses_color: Color
    beard: int  # 0 none, 1 stubble, 2 full, 3 goatee
    moustache: bool
    moles: tuple[tuple[float, float, float], ...]  # (x, y, radius)
    texture_seed: int
    texture_amp: float


def _color(base: np.ndarray, rng: np.random.Generator, jitter: float) -> Color:
    return tuple(int(v) for v in np.clip(base + rng.normal(0, jitter, 3), 0, 255))


def sample_identity(rng: np.random.Generator) -> Identity:
    """Draw a random identity."""
    u = rng.uniform
    skin = _color(_SKIN_LIGHT + u() * (_SKIN_DARK - _SKIN_LIGHT), rng, 8)
    return Identity(
        face_w=u(0.31, 0.41), face_h=u(0.43, 0.52), face_cy=u(0.50, 0.54), jaw=u(0.0, 0.45),
        chin=u(0.6, 1.3), skin=skin, hair=_color(_HAIR[rng.integers(len(_HAIR))], rng, 12),
        hair_style=int(rng.integers(4)), hairline=u(0.13, 0.27), fringe_side=u(-1, 1),
        fringe_depth=u(0.0, 0.14), hair_volume=u(0.01, 0.07),
        eye_dx=u(0.135, 0.185), eye_y=u(0.44, 0.48), eye_w=u(0.045, 0.075), eye_h=u(0.016, 0.03),
        eye_tilt=u(-0.15, 0.15), iris=_color(_IRIS[rng.integers(len(_IRIS))], rng, 15),
        brow_gap=u(0.045, 0.085), brow_thick=u(0.01, 0.03), brow_angle=u(-0.3, 0.3),
        brow_arch=u(0.0, 0.03), brow_len=u(0.09, 0.15),
        nose_len=u(0.12, 0.2), nose_w=u(0.05, 0.09),
        mouth_y=u(0.8, 0.845), mouth_w=u(0.07, 0.12), mouth_h=u(0.012, 0.03),
        lips=_color(np.array(skin) * [0.8, 0.55, 0.55] + [30, 0, 0], rng, 12), smile=u(-0.01, 0.02),
        glasses=int(rng.choice(3, p=[0.7, 0.15, 0.15])), glasses_color=_color(np.full(3, 60.0), rng, 50),
        beard=int(rng.choice(4, p=[0.55, 0.2, 0.15, 0.1])), moustache=bool(u() < 0.2),
        moles=tuple((u(0.25, 0.75), u(0.35, 0.9), u(0.006, 0.012)) for _ in range(rng.integers(4))),
        texture_seed=int(rng.integers(2**31)), texture_amp=u(8, 22),
    )


class _Canvas:
    """RGB drawing plus a silhouette mask; shapes are given in unit face coordinates and posed by an affine map."""

    def __init__(self, size: int, matrix: np.ndarray, offset: np.ndarray):
        self.img = Image.new("RGB", (size, size))
        self.mask = Image.new("L", (size, size), 0)
        self._draw = ImageDraw.Draw(self.img)
        self._blend = ImageDraw.Draw(self.img, "RGBA")  # for translucent (RGBA) fills
        self._mdraw = ImageDraw.Draw(self.mask)
        self._affine = (matrix * size).ravel().tolist() + offset.tolist()
        self._unit = size * np.sqrt(abs(np.linalg.det(matrix)))

    def _xy(self, pts) -> list[tuple[float, float]]:
        a, b, c, d, e, f = self._affine
        pts = pts.tolist() if isinstance(pts, np.ndarray) else pts
        return [(a * x + b * y + e, c * x + d * y + f) for x, y in pts]

    def poly(self, pts, fill, silhouette: bool = False) -> None:
        xy = self._xy(pts)
        (self._blend if len(fill) == 4 else self._draw).polygon(xy, fill=fill)
        if silhouette:
            self._mdraw.polygon(xy, fill=255)

    def line(self, pts, fill, width: float) -> None:
        self._draw.line(self._xy(pts), fill=fill, width=max(1, round(width * self._unit)), joint="curve")

    def ellipse(self, cx, cy, rx, ry, fill, angle: float = 0.0, silhouette: bool = False) -> None:
        self.poly(_ellipse_pts(cx, cy, rx, ry, angle), fill, silhouette)

    def dot(self, cx, cy, r, fill) -> None:
        (x, y), = self._xy([(cx, cy)])
        r *= self._unit
        self._draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)


def _shade(c: Color, f: float) -> Color:
    return tuple(int(min(255, v * f)) for v in c)


def _ellipse_pts(cx, cy, rx, ry, angle: float = 0.0) -> list[tuple[float, float]]:
    ca, sa = math.cos(angle), math.sin(angle)
    return [(cx + ca * rx * u - sa * ry * v, cy + sa * rx * u + ca * ry * v) for u, v in _CIRCLE]


def _face_outline(idn: Identity) -> np.ndarray:
    x, y = _OUTLINE.real, _OUTLINE.imag
    low = np.clip(y, 0, 1)
    y = np.where(y > 0, low ** idn.chin, y)
    x = x * (1 - idn.jaw * low**2)
    return np.stack([0.5 + idn.face_w * x, idn.face_cy + idn.face_h * y], 1)


def _draw_head(c: _Canvas, idn: Identity) -> None:
    hw = idn.face_w + idn.hair_volume
    if idn.hair_style in (2, 3):
        end, flare = (1.05, 0.06) if idn.hair_style == 2 else (idn.mouth_y, 0.02)
        c.poly([(0.5 - hw, idn.face_cy - 0.05), (0.5 + hw, idn.face_cy - 0.05), (0.5 + hw + flare, end),
                (0.5 - hw - flare, end)], idn.hair, silhouette=True)
    if idn.hair_style != 0:
        c.ellipse(0.5, idn.face_cy - 0.04, hw, idn.face_h + idn.hair_volume - 0.04, idn.hair, silhouette=True)
    for s in (-1, 1):
        c.ellipse(0.5 + s * idn.face_w * 0.97, idn.eye_y + 0.06, 0.035, 0.065, _shade(idn.skin, 0.9), silhouette=True)
    c.poly([(0.5 - idn.face_w * 0.5, idn.face_cy), (0.5 + idn.face_w * 0.5, idn.face_cy),
            (0.5 + idn.face_w * 0.6, 1.05), (0.5 - idn.face_w * 0.6, 1.05)], _shade(idn.skin, 0.8), silhouette=True)
    c.poly(_face_outline(idn), idn.skin, silhouette=True)


def _draw_hair_front(c: _Canvas, idn: Identity) -> None:
    hw, hh = idn.face_w + idn.hair_volume * 0.5, idn.face_h + idn.hair_volume
    line_y = idn.hairline + (idn.eye_y - 0.05 - idn.hairline) * np.abs(_U25) ** 4
    line_y += idn.fringe_depth * np.exp(-(((_U25 - idn.fringe_side) / 0.5) ** 2))
    cap_y = idn.face_cy - hh * _ARC.imag
    cap_y = np.minimum(cap_y, np.maximum(line_y[::-1], idn.face_cy - hh))
    cap = np.stack([0.5 + hw * _ARC.real, cap_y], 1)
    front = np.concatenate([np.stack([0.5 + hw * _U25, line_y], 1), cap])
    c.poly(front, idn.hair + (120,) if idn.hair_style == 0 else idn.hair, silhouette=idn.hair_style != 0)


def _draw_eyes(c: _Canvas, idn: Identity, fx: float) -> None:
    for s in (-1, 1):
        cx, cy = 0.5 + s * idn.eye_dx + fx, idn.eye_y
        c.ellipse(cx, cy, idn.eye_w, idn.eye_h, (235, 232, 225), s * idn.eye_tilt)
        r = idn.eye_h * 0.95
        c.dot(cx, cy, r, idn.iris)
        c.dot(cx, cy, r * 0.45, (15, 12, 12))
        lid = _ellipse_pts(cx, cy, idn.eye_w, idn.eye_h, s * idn.eye_tilt)[8:]
        c.line(lid, _shade(idn.hair, 0.5), 0.007)


def _draw_brows(c: _Canvas, idn: Identity, fx: float, raise_: float) -> None:
    u = _U7
    y = idn.eye_y - idn.brow_gap - raise_ - idn.brow_angle * idn.brow_len * u - idn.brow_arch * np.sin(np.pi * u)
    for s in (-1, 1):
        x = 0.5 + fx + s * (idn.eye_dx - idn.brow_len * 0.45 + idn.brow_len * u)
        c.line(np.stack([x, y], 1), _shade(idn.hair, 0.7), idn.brow_thick)


def _draw_nose(c: _Canvas, idn: Identity, fx: float) -> None:
    tip_x, tip_y, w = 0.5 + 1.5 * fx, idn.eye_y + idn.nose_len, idn.nose_w
    c.poly([(0.5 + fx, idn.eye_y + 0.02), (tip_x + w * 0.6, tip_y), (tip_x, tip_y + 0.015),
            (tip_x - w * 0.6, tip_y)], _shade(idn.skin, 0.88))
    for s in (-1, 1):
        c.dot(tip_x + s * w * 0.35, tip_y + 0.004, 0.009, _shade(idn.skin, 0.45))


def _draw_mouth(c: _Canvas, idn: Identity, fx: float, opening: float, smile: float) -> None:
    u = _U13
    x = (0.5 + fx + idn.mouth_w * u).tolist()
    mid = idn.mouth_y - smile * u**2
    body = (1 - u**2) ** 0.6
    upper = mid - idn.mouth_h * 0.8 * body + 0.006 * np.exp(-((u / 0.15) ** 2))
    lower_top = mid + opening * (1 - u**2)  # the open mouth is the dark band between mid and lower_top
    lower = lower_top + idn.mouth_h * body
    for top, bottom, colour in ((mid, lower_top, (40, 15, 15)), (upper, mid, idn.lips),
                                (lower_top, lower, _shade(idn.lips, 1.08))):
        c.poly(list(zip(x, top.tolist())) + list(zip(x[::-1], bottom[::-1].tolist())), colour)


def _draw_beard(c: _Canvas, idn: Identity, fx: float) -> None:
    if idn.beard in (1, 2):
        outline = _face_outline(idn)
        low = outline[outline[:, 1] > idn.mouth_y - 0.08]
        low = low[np.argsort(np.arctan2(low[:, 1] - idn.face_cy, low[:, 0] - 0.5))]
        colour = _shade(idn.hair, 0.9) + (90,) if idn.beard == 1 else _shade(idn.hair, 0.9)
        c.poly(np.concatenate([low, [(0.5 + fx, idn.mouth_y - 0.05)]]), colour)
    elif idn.beard == 3:
        c.ellipse(0.5 + fx, idn.mouth_y + 0.08, idn.mouth_w * 0.8, 0.06, _shade(idn.hair, 0.9))
    if idn.moustache:
        x0, y0 = 0.5 + fx, idn.mouth_y - idn.mouth_h - 0.01
        c.poly([(x0 - idn.mouth_w * 1.1, y0 + 0.02), (x0, y0 - 0.025), (x0 + idn.mouth_w * 1.1, y0 + 0.02),
                (x0, y0 + 0.005)], _shade(idn.hair, 0.8))


def _draw_glasses(c: _Canvas, idn: Identity, fx: float) -> None:
    col, w, y = idn.glasses_color, 0.012, idn.eye_y
    rx, ry = idn.eye_w * 1.5, idn.eye_w * 1.1
    for s in (-1, 1):
        cx = 0.5 + s * idn.eye_dx + fx
        if idn.glasses == 1:
            rim = _ellipse_pts(cx, y, rx, ry)
        else:
            rim = [(cx - rx, y - ry * 0.8), (cx + rx, y - ry * 0.8), (cx + rx, y + ry * 0.7), (cx - rx, y + ry * 0.7)]
        c.poly(rim, col + (40,))
        c.line(rim + rim[:1], col, w)
        c.line([(cx + s * rx, y - ry * 0.3), (0.5 + s * idn.face_w, y - ry * 0.5)], col, w)
    c.line([(0.5 + fx - idn.eye_dx + rx, y - 0.01), (0.5 + fx + idn.eye_dx - rx, y - 0.01)], col, w)


@lru_cache(maxsize=4096)
def _texture_grid(seed: int, amp: float) -> Image.Image:
    """Identity skin texture: a small low-frequency noise grid, centred at 128 (cached, ~300 bytes)."""
    g = np.random.default_rng(seed)
    grid = g.normal(0, 1, (_TEXTURE_GRID, _TEXTURE_GRID, 1)) + 0.5 * g.normal(0, 1, (_TEXTURE_GRID, _TEXTURE_GRID, 3))
    return Image.fromarray(np.clip(128 + amp * grid, 0, 255).astype(np.uint8), "RGB")


def _posed_texture(idn: Identity, matrix: np.ndarray, offset: np.ndarray, size: int) -> Image.Image:
    """The identity texture, upsampled (bilinear, half size) then posed (nearest: cheap, the texture is smooth)."""
    inv = np.linalg.inv(matrix) * 0.5
    shift = -inv @ offset
    coeffs = (inv[0, 0], inv[0, 1], shift[0], inv[1, 0], inv[1, 1], shift[1])
    tex = _texture_grid(idn.texture_seed, idn.texture_amp).resize((size // 2,) * 2, Image.Resampling.BILINEAR)
    return tex.transform((size, size), Image.Transform.AFFINE, coeffs, Image.Resampling.NEAREST, fillcolor=(128,) * 3)


def _sample_pose(rng: np.random.Generator, size: int, squeeze: float) -> tuple[np.ndarray, np.ndarray]:
    """Affine map unit face coordinates -> pixels: rotation, scale, horizontal squeeze and shift."""
    theta, scale = np.deg2rad(rng.uniform(-8, 8)), rng.uniform(0.95, 1.05)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    matrix = rot @ np.diag([scale * squeeze, scale])
    offset = size * (0.5 - matrix @ np.full(2, 0.5)) + rng.uniform(-4, 4, 2)
    return matrix, offset


def _draw_identity(idn: Identity, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The posed face with expression jitter and skin texture: float RGB ``[3, H, W]``, bool mask ``[H, W]``."""
    yaw = rng.uniform(-0.5, 0.5)
    fx = 0.04 * yaw  # inner features slide sideways while the outline is squeezed: a cheap out-of-plane yaw
    matrix, offset = _sample_pose(rng, size, 1 - 0.12 * abs(yaw))
    opening = rng.uniform(0, 0.025) * (rng.uniform() < 0.5)
    raise_, smile = rng.uniform(-0.01, 0.015), idn.smile + rng.uniform(-0.01, 0.01)
    c = _Canvas(size, matrix, offset)
    _draw_head(c, idn)
    for x, y, r in idn.moles:
        c.dot(x + fx, y, r, _shade(idn.skin, 0.5))
    _draw_beard(c, idn, fx)
    _draw_eyes(c, idn, fx)
    _draw_brows(c, idn, fx, raise_)
    _draw_nose(c, idn, fx)
    _draw_mouth(c, idn, fx, opening, smile)
    _draw_hair_front(c, idn)
    if idn.glasses:
        _draw_glasses(c, idn, fx)
    img = ImageChops.overlay(c.img, _posed_texture(idn, matrix, offset, size))
    return np.asarray(img, dtype=np.float32).transpose(2, 0, 1), np.asarray(c.mask) > 0


def _ramp(rng: np.random.Generator, size: int) -> np.ndarray:
    """Linear ramp in [-0.5, 0.5] along a random direction, shape ``[H, W]``."""
    phi = rng.uniform(0, 2 * np.pi)
    t = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    return np.float32(np.cos(phi)) * t[None, :] + np.float32(np.sin(phi)) * t[:, None]


def _rgb(rng: np.random.Generator, low: float, high: float) -> np.ndarray:
    return rng.uniform(low, high, (3, 1, 1)).astype(np.float32)


def _occlude(img: np.ndarray, rng: np.random.Generator) -> None:
    """Paint a random rectangle or a full-width/height bar over part of the face, in place."""
    size, colour, kind = img.shape[1], _rgb(rng, 0, 255), rng.integers(3)
    lo, hi = sorted(rng.integers(int(0.2 * size), int(0.95 * size), 2))
    hi = max(hi, lo + size // 8)
    if kind == 0:
        img[:, lo:hi] = colour
    elif kind == 1:
        img[:, :, lo:hi] = colour
    else:
        w, h = rng.integers(size // 5, size // 2, 2)
        x, y = rng.integers(0, size - w), rng.integers(size // 6, size - h)
        img[:, y:y + h, x:x + w] = colour


def _illuminate(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Global gain/contrast, a directional light gradient and a colour cast."""
    contrast, gain = rng.uniform(0.8, 1.2), rng.uniform(0.8, 1.2)
    img = img * np.float32(contrast) + np.float32(img.mean() * (gain - contrast))
    img *= 1 + np.float32(rng.uniform(0.1, 0.5)) * _ramp(rng, img.shape[1])
    return img * _rgb(rng, 0.95, 1.05)


def _blur(img: np.ndarray, passes: int) -> None:
    """In-place separable binomial [1, 2, 1] blur (Gaussian-like, sigma ~ 0.7 * sqrt(passes)); borders kept."""
    for _ in range(passes):
        img[:, 1:-1] = (img[:, :-2] + 2 * img[:, 1:-1] + img[:, 2:]) * np.float32(0.25)
        img[:, :, 1:-1] = (img[:, :, :-2] + 2 * img[:, :, 1:-1] + img[:, :, 2:]) * np.float32(0.25)


def render_face(identity: Identity, rng: np.random.Generator, size: int = 112) -> np.ndarray:
    """One image of this identity: uint8 RGB array [size, size, 3], with per-image nuisance drawn from rng."""
    face, mask = _draw_identity(identity, rng, size)
    bg0, bg1 = _rgb(rng, 0, 255), _rgb(rng, 0, 255)
    img = np.where(mask, face, bg0 + (bg1 - bg0) * (_ramp(rng, size) + 0.5))  # background: a random colour ramp
    if rng.uniform() < 0.05:
        _occlude(img, rng)
    img = _illuminate(img, rng)
    if rng.uniform() < 0.1:
        _blur(img, int(rng.integers(1, 4)))
    k = rng.integers(2, 8)  # uniform pixel noise in [-k, k]
    img += rng.integers(-k, k, img.shape, dtype=np.int8, endpoint=True)
    return np.stack(list(np.clip(img, 0, 255).astype(np.uint8)), axis=-1)
