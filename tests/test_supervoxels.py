"""3-D supervoxels: the MST-based implementation equals a direct Felzenszwalb on small volumes."""
import numpy as np
import pytest

from data_preprocessing import supervoxels as sv
from data_preprocessing.contract import load_dataset
from data_preprocessing.phantom import write_phantom


def _reference(volume, spacing, scale, min_size):
    """Textbook Felzenszwalb over every edge of the 26-neighbourhood, in plain Python."""
    u, v, cost = sv.grid_edges(volume.astype(np.float64), spacing[2] / spacing[0])
    order = np.argsort(cost, kind="stable")
    n = volume.size
    parent, size, internal = list(range(n)), [1] * n, [0.0] * n
    k = scale / 255.0

    def find(x):
        while parent[x] != x:
            x = parent[x]
        return x
    for i in order:
        a, b, w = find(int(u[i])), find(int(v[i])), float(cost[i])
        if a != b and w < internal[a] + k / size[a] and w < internal[b] + k / size[b]:
            parent[b] = a
            size[a] += size[b]
            internal[a] = w
    for i in order:
        a, b = find(int(u[i])), find(int(v[i]))
        if a != b and (size[a] < min_size or size[b] < min_size):
            parent[b] = a
            size[a] += size[b]
    roots = np.array([find(x) for x in range(n)])
    return np.unique(roots, return_inverse=True)[1].reshape(volume.shape)


def _same_partition(a, b):
    pairs = set(zip(a.ravel().tolist(), b.ravel().tolist()))
    return len(pairs) == len(np.unique(a)) == len(np.unique(b))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_direct_felzenszwalb(seed):
    rng = np.random.default_rng(seed)
    vol = rng.uniform(0, 255, (4, 7, 6))
    vol[:, :3, :3] = 100.0                      # a flat block: zero-cost edges
    vol[2, 5, 4] = vol[2, 5, 3] + 1e-4          # a tiny step that the threshold pass merges
    for min_size in (1, 5, 20):
        for scale in (1.0, 300.0):
            ours = sv.felzenszwalb_3d(vol, (1.0, 1.0, 2.5), scale, min_size)
            assert _same_partition(ours, _reference(vol, (1.0, 1.0, 2.5), scale, min_size))


def test_flat_regions_become_supervoxels_and_small_ones_merge():
    vol = np.zeros((4, 10, 10))
    vol[:, :, 5:] = 200.0
    vol[1, 2, 2] = 50.0                          # a 1-voxel blip inside the dark half
    labels = sv.felzenszwalb_3d(vol, (1.0, 1.0, 3.0), 1.0, min_size=10)
    assert len(np.unique(labels)) == 2
    assert labels[1, 2, 2] == labels[0, 0, 0] != labels[0, 0, 9]


def test_anisotropy_weights():
    assert sv._edge_weight((0, 1, 1), 3.0) == 1.0
    assert sv._edge_weight((1, 0, 0), 3.0) == pytest.approx(3.0)
    assert sv._edge_weight((1, 1, 0), 3.0) == pytest.approx(np.sqrt(10 / 2))
    assert sv._edge_weight((1, 1, -1), 3.0) == pytest.approx(np.sqrt(11 / 3))
    assert len(sv.OFFSETS) == 13


def test_generate_on_phantom_records_and_covers_body(tmp_path):
    write_phantom(tmp_path, seed=0, size=48, n_slices=5)
    counts = sv.generate(tmp_path, min_size=200, workers=1)
    ds = load_dataset(tmp_path)
    assert ds.meta["pseudolabels"]["SV200"]["method"] == "felzenszwalb3d"
    assert all(c >= 2 for c in counts)
    import SimpleITK as sitk
    ids = sitk.GetArrayFromImage(sitk.ReadImage(str(ds.path("pseudolabel", "1", "SV200"))))
    assert ids.max() == counts[0]
    assert np.array_equal(np.unique(ids[ids > 0]), np.arange(1, counts[0] + 1))


def test_prepare_writes_supervoxels_and_the_missing_ones_name_their_command(tmp_path):
    from data_preprocessing import prepare
    from data_preprocessing.contract import load_dataset
    from data_preprocessing.phantom import write_phantom
    from dataloaders.volumes import load_volumes

    src = tmp_path / "src"
    write_phantom(src, seed=4, size=64, n_slices=4)
    prepare.main(["--dataset", "PHANTOM", "--src", str(src), "--dst", str(tmp_path / "ds"),
                  "--supervoxels", "300", "--workers", "1"])
    ds = load_dataset(tmp_path / "ds")
    assert "SV300" in ds.meta["pseudolabels"]
    assert all(ds.path("pseudolabel", p, "SV300").is_file() for p in ds.cases)
    hint = r"`python -m data_preprocessing\.supervoxels --dir .* --min-size 1000`"
    with pytest.raises(FileNotFoundError, match=hint):
        load_volumes(ds, ds.cases[:1], superpix_scale="SV1000")
