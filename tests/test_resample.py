"""data/resample.py: bilinear affine resampling computed in numpy, the same bits in every image."""
import cv2
import numpy as np
import pytest

from lumbar.data.resample import invert_affine, rotation_matrix, warp_affine


def ramp(h=40, w=50, a=0.013, b=-0.021, c=0.7) -> np.ndarray:
    """A linear image: bilinear sampling reproduces it exactly at any point inside."""
    y, x = np.mgrid[0:h, 0:w]
    return (a * x + b * y + c).astype(np.float32)


def test_a_linear_image_is_sampled_exactly_inside_by_both_paths():
    img = ramp()
    scaled = np.array([[0.7, 0.0, 3.2], [0.0, 1.3, 2.9]])  # output -> input, axis-aligned
    turned = np.array([[0.8, 0.3, 5.1], [-0.25, 0.9, 12.4]])
    for m in (scaled, turned):
        out = warp_affine(img, m, (20, 25))
        y, x = np.mgrid[0:20, 0:25]
        sx, sy = m[0, 0] * x + m[0, 1] * y + m[0, 2], m[1, 0] * x + m[1, 1] * y + m[1, 2]
        inside = (sx >= 0) & (sx <= 49) & (sy >= 0) & (sy <= 39)
        assert inside.mean() > 0.5
        want = 0.013 * sx - 0.021 * sy + 0.7
        assert np.abs(out[inside] - want[inside]).max() < 2e-6


def test_the_separable_path_gives_the_general_paths_bits():
    rng = np.random.default_rng(0)
    img = rng.random((3, 60, 70)).astype(np.float32)
    m = np.array([[1.37, 0.0, -4.2], [0.0, 0.81, 6.6]])
    general = m.copy()
    general[0, 1] = 1e-300  # not zero: the general path, the same map to the last bit
    for border in ("constant", "replicate"):
        a = warp_affine(img, m, (50, 45), border=border)
        b = warp_affine(img, general, (50, 45), border=border)
        assert a.dtype == np.float32 and a.shape == (3, 50, 45)
        assert np.array_equal(a, b)


def test_borders_constant_zero_and_replicate_the_edge():
    img = np.full((10, 10), 2.0, np.float32)
    m = np.array([[1.0, 0.0, -5.0], [0.0, 1.0, 0.0]])  # output x samples input x - 5
    const = warp_affine(img, m, (10, 10))
    assert (const[:, :4] == 0).all() and (const[:, 5:] == 2).all()
    edge = warp_affine(img, m, (10, 10), border="replicate")
    assert (edge == 2).all()
    with pytest.raises(ValueError, match="border"):
        warp_affine(img, m, (10, 10), border="wrap")


def test_it_follows_opencvs_conventions_to_opencvs_own_rounding():
    """Same maps, same centres, same borders as cv2.warpAffine (which rounds coordinates to 1/32 px: on a
    smooth image the two agree to that rounding)."""
    y, x = np.mgrid[0:64, 0:64]
    img = (np.sin(x / 7.0) * np.cos(y / 9.0) + 1).astype(np.float32)
    m = np.array([[0.9, 0.0, 4.3], [0.0, 1.1, -2.2]])
    ref = cv2.warpAffine(img, m, (48, 40), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
    assert np.abs(warp_affine(img, m, (40, 48)) - ref).max() < 0.01
    fwd = cv2.getRotationMatrix2D((31.5, 31.5), 8.0, 1.1)
    assert np.allclose(rotation_matrix((31.5, 31.5), 8.0, 1.1), fwd, atol=1e-12)
    ref = cv2.warpAffine(img, fwd, (64, 64), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
    ours = warp_affine(img, fwd, (64, 64), inverse=False)
    assert np.abs(ours - ref)[8:-8, 8:-8].max() < 0.01
    assert np.array_equal(ours, warp_affine(img, invert_affine(fwd), (64, 64)))
