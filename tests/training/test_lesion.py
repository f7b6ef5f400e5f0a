"""Lesion training pieces: disc targets, pairs of breasts, the combiner, the FROC, features."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from cad_node.training import datasets as dsets
from cad_node.training.lesion import (
    STRIDE,
    VARIANTS,
    augment_image,
    augment_points,
    build_features,
    disc_targets,
    fast_lesion_config,
    fit_combiner,
    fit_heads,
    froc,
    other_breast,
    predict_maps,
    task_lesions,
)
from cad_node.training.lesion_net import (
    STAGE7_INPUT_CHANNELS,
    HeadEnsemble,
    LesionHead,
    LiteLesionNet,
)


def test_disc_targets_mark_cells_inside_each_disc() -> None:
    t = disc_targets([(40.0, 40.0, 20.0, True), (100.0, 20.0, 4.0, False)], (8, 4), 12.0)
    assert t.shape == (2, 8, 4)
    assert t[0, 2, 2] and t[1, 2, 2]  # cell centre (40, 40)
    assert t[0, 6, 1] and not t[1, 6, 1]  # benign: any-abnormality channel only
    assert t[0].sum() > t[1].sum() and not t[:, 0, 3].any()


def test_other_breast_pairs_films_of_one_patient() -> None:
    def s(i: str, p: str, lat: str | None) -> dsets.Sample:
        return dsets.Sample(i, p, Path(i), lat, "normal")

    pairs = other_breast(
        [s("a", "p1", "R"), s("b", "p1", "L"), s("c", "p2", "R"), s("d", "p3", None)]
    )
    assert pairs.tolist() == [1, 0, -1, -1]


def test_combiner_learns_that_the_other_breast_is_a_reference() -> None:
    rng = np.random.default_rng(0)
    tissue = rng.normal(0, 1, 400)  # shared by both breasts of a woman
    y = rng.integers(0, 2, 400)
    own = tissue + 1.0 * y + rng.normal(0, 0.3, 400)
    other = tissue + rng.normal(0, 0.3, 400)
    comb = fit_combiner(own, other, y)
    assert comb.other < 0 < comb.own
    from cad_node.training.metrics import roc_auc

    assert roc_auc(y, comb.probability(own, other)) > roc_auc(y, comb.probability(own, None)) + 0.1


def test_froc_counts_hits_inside_the_circle_and_false_positives() -> None:
    p1 = np.zeros((8, 8))
    p1[2, 2] = 0.9  # centre (40, 40): inside the lesion below
    p1[6, 6] = 0.8  # a false positive
    p2 = np.zeros((8, 8))
    p2[4, 4] = 0.95  # false positive on a normal film
    mask = np.ones((8, 8), bool)
    result = froc([p1, p2], [mask, mask], [[(40.0, 40.0, 10.0)], []], rates=(0.5, 1.0))
    # best first: FP (0.95) -> 0.5 FP/image, hit (0.9), FP (0.8) -> 1 FP/image
    assert result["fp_per_image"] == [0.5, 1.0] and result["sensitivity"] == [1.0, 1.0]
    assert result["n_lesions"] == 1
    # 0.5 FP/image allows the 0.95 false positive and the 0.9 hit; 1 FP/image also the 0.8
    assert result["score_thresholds"] == [0.9, 0.8]
    strict = froc([p1, p2], [mask, mask], [[(40.0, 40.0, 10.0)], []], rates=(0.25,))
    assert strict["sensitivity"] == [0.0]
    assert STRIDE == 16


def test_task_lesions_keep_malignant_ones_for_the_malignant_task() -> None:
    points = [(1.0, 2.0, 3.0, True), (4.0, 5.0, 6.0, False)]
    assert task_lesions(points, "malignant") == [(1.0, 2.0, 3.0)]
    assert len(task_lesions(points, "abnormal")) == 2


def test_features_targets_and_known_maps_of_real_films(mias_dir: Path, tmp_path: Path) -> None:
    csv = mias_dir / "mias_labels_1024.csv"
    wanted = {"mdb003", "mdb004", "mdb005", "mdb006", "mdb215", "mdb216"}
    samples = [s for s in dsets.load_mias_csv(csv) if s.sample_id in wanted]
    lesions_csv = mias_dir / "mias_abnormalities.csv"
    lesions = dsets.load_mias_lesions(lesions_csv, size=1024)
    cfg = fast_lesion_config(cache_dir=tmp_path, variants=2, progress=False)
    feats = build_features(samples, lesions, dsets.mias_finding_counts(lesions_csv), cfg)
    ids = [s.sample_id for s in samples]
    assert feats.s16.shape[:2] == (2, 6) and feats.s16.shape[2] == 112
    assert feats.s32.shape[2] == 1280
    benign = ids.index("mdb005")  # two circumscribed masses with centres
    assert feats.target[0, benign, 0].sum() > 0 and feats.known[benign]
    assert feats.target[0, ids.index("mdb003")].sum() == 0 and feats.known[ids.index("mdb003")]
    assert not feats.known[ids.index("mdb216")]  # calcifications without a centre
    assert feats.labels[ids.index("mdb216")].tolist() == [1, 1]
    # the mirror variant mirrors the targets
    assert np.array_equal(feats.target[1, benign, 0], feats.target[0, benign, 0][::-1])
    assert feats.other[ids.index("mdb003")] == ids.index("mdb004")
    cached = build_features(samples, lesions, dsets.mias_finding_counts(lesions_csv), cfg)
    assert np.array_equal(np.asarray(cached.s32), np.asarray(feats.s32))
    assert len(list(tmp_path.glob("*.npy"))) == 6  # three arrays per variant

    # maps from the cached features equal the whole model's on the film, mirror TTA included
    tta = dataclasses.replace(cfg, mirror_tta=True)
    net = LiteLesionNet(**tta.net_kwargs(), pretrained=True).eval()
    torch.nn.init.normal_(net.head.out.weight, std=0.5)  # a head whose maps are not flat
    idx = np.arange(2)
    _, maps = predict_maps(net, feats, idx, tta)
    _, plain = predict_maps(net, feats, idx, cfg)
    films = [dsets.preprocess_sample(s, cfg.spacing_mm, cfg.size).image for s in samples[:2]]
    with torch.no_grad():
        whole, _ = net.lesion_maps(torch.from_numpy(np.stack(films)))
    np.testing.assert_allclose(maps, whole.numpy(), atol=0.05)
    assert np.abs(maps - plain).max() > 0.1


def test_every_variant_moves_lesions_with_the_film() -> None:
    image = np.zeros((1, 128, 96), np.float32)
    image[0, 30:35, 60:65] = 1.0  # pixels 30-34: centred at pixel 32
    point = [(32.0, 62.0, 3.0, True)]
    for v in range(len(VARIANTS)):
        moved = augment_image(image, v)[0]
        [(row, col, radius, malignant)] = augment_points(point, v, (128, 96))
        rr, cc = np.nonzero(moved > 0.5)
        centre = (rr.mean(), cc.mean())
        assert abs(centre[0] - row) <= 1.0 and abs(centre[1] - col) <= 1.0, (v, centre, row, col)
        assert malignant and radius == 3.0 * VARIANTS[v][3]


def test_an_ensemble_of_heads_averages_maps_and_loads_as_one_net(
    mias_dir: Path, tmp_path: Path
) -> None:
    csv = mias_dir / "mias_labels_1024.csv"
    wanted = {"mdb001", "mdb002", "mdb003", "mdb004", "mdb005", "mdb006"}
    samples = [s for s in dsets.load_mias_csv(csv) if s.sample_id in wanted]
    lesions_csv = mias_dir / "mias_abnormalities.csv"
    lesions = dsets.load_mias_lesions(lesions_csv, size=1024)
    cfg = fast_lesion_config(cache_dir=tmp_path, progress=False, heads=2)
    feats = build_features(samples, lesions, dsets.mias_finding_counts(lesions_csv), cfg)
    idx = np.arange(len(samples))
    net = fit_heads(feats, idx, cfg, seed=3)
    assert isinstance(net.head, HeadEnsemble) and len(net.head.members) == 2
    _, maps = predict_maps(net, feats, idx, cfg)
    single = dataclasses.replace(cfg, heads=1)
    members = []
    for member in net.head.members:
        one = LiteLesionNet(**single.net_kwargs())
        one.head = member  # type: ignore[assignment]
        members.append(predict_maps(one.eval(), feats, idx, single)[1])
    assert np.abs(members[0] - members[1]).max() > 1e-3  # other seeds, other heads
    np.testing.assert_allclose(maps, (members[0] + members[1]) / 2, atol=1e-5)
    # the exported shape: a fresh net of two heads takes the trained weights strictly
    fresh = LiteLesionNet(**cfg.net_kwargs())
    fresh.load_state_dict(net.state_dict(), strict=True)


def test_a_fine_head_reads_cached_stride8_features_like_the_whole_model(
    mias_dir: Path, tmp_path: Path
) -> None:
    csv = mias_dir / "mias_labels_1024.csv"
    samples = [s for s in dsets.load_mias_csv(csv) if s.sample_id in {"mdb005", "mdb006"}]
    lesions_csv = mias_dir / "mias_abnormalities.csv"
    lesions = dsets.load_mias_lesions(lesions_csv, size=1024)
    counts = dsets.mias_finding_counts(lesions_csv)
    plain_cfg = fast_lesion_config(cache_dir=tmp_path, progress=False)
    plain = build_features(samples, lesions, counts, plain_cfg)
    assert plain.s8 is None and len(list(tmp_path.glob("*.npy"))) == 3
    cfg = dataclasses.replace(plain_cfg, fine=True)
    feats = build_features(samples, lesions, counts, cfg)  # the stride-8 part is added
    assert feats.s8 is not None and len(list(tmp_path.glob("*.npy"))) == 4
    h16, w16 = feats.s16.shape[-2:]
    assert feats.s8.shape[2:] == (40, 2 * h16, 2 * w16)
    net = LiteLesionNet(**cfg.net_kwargs(), pretrained=True).eval()
    assert net.fine and isinstance(net.head, LesionHead) and net.head.reduce8 is not None
    torch.nn.init.normal_(net.head.mix.weight[:, -32:], std=0.5)  # the stride-8 inputs count
    torch.nn.init.normal_(net.head.out.weight, std=0.5)
    idx = np.arange(2)
    _, maps = predict_maps(net, feats, idx, cfg)
    films = [dsets.preprocess_sample(s, cfg.spacing_mm, cfg.size).image for s in samples]
    with torch.no_grad():
        whole, _ = net.lesion_maps(torch.from_numpy(np.stack(films)))
    np.testing.assert_allclose(maps, whole.numpy(), rtol=1e-2, atol=0.05)  # float16 cache
    # the stride-8 branch changes the maps: without its features they differ
    with torch.no_grad():
        net.head.reduce8.weight.zero_()
        net.head.reduce8.bias.zero_()
    _, without = predict_maps(net, feats, idx, cfg)
    assert np.abs(maps - without).max() > 0.1


def test_stage7_trains_from_cached_stage6_output_like_the_whole_model(
    mias_dir: Path, tmp_path: Path
) -> None:
    csv = mias_dir / "mias_labels_1024.csv"
    wanted = {"mdb001", "mdb002", "mdb005", "mdb006"}
    samples = [s for s in dsets.load_mias_csv(csv) if s.sample_id in wanted]
    lesions_csv = mias_dir / "mias_abnormalities.csv"
    lesions = dsets.load_mias_lesions(lesions_csv, size=1024)
    cfg = fast_lesion_config(cache_dir=tmp_path, progress=False, tail_stages=1, tail_epochs=1)
    feats = build_features(samples, lesions, dsets.mias_finding_counts(lesions_csv), cfg)
    assert feats.s7in is not None and len(list(tmp_path.glob("*.npy"))) == 4
    assert feats.s7in.shape[2:] == (STAGE7_INPUT_CHANNELS, *feats.s32.shape[-2:])
    idx = np.arange(len(samples))
    net = fit_heads(feats, idx, cfg, seed=1)
    assert net.trainable_tail == 1
    imagenet = LiteLesionNet(pretrained=True).backbone._blocks
    trained = net.backbone._blocks
    # stage 7 (block 15) has learnt; stage 6 (block 14), which fed the cache, has not
    assert not torch.equal(trained[15]._project_conv.weight, imagenet[15]._project_conv.weight)
    assert torch.equal(trained[14]._project_conv.weight, imagenet[14]._project_conv.weight)
    _, maps = predict_maps(net, feats, idx, cfg)
    films = [dsets.preprocess_sample(s, cfg.spacing_mm, cfg.size).image for s in samples]
    with torch.no_grad():
        whole, _ = net.lesion_maps(torch.from_numpy(np.stack(films)))
    np.testing.assert_allclose(maps, whole.numpy(), rtol=1e-2, atol=0.05)  # float16 cache

    # two heads: the second keeps its own stage 7, and the whole model averages the two
    two = dataclasses.replace(cfg, heads=2)
    pair = fit_heads(feats, idx, two, seed=1)
    assert isinstance(pair.head, HeadEnsemble) and len(pair.own_tails) == 1
    own = pair.own_tails[0].block._project_conv.weight
    assert not torch.equal(own, net.backbone._blocks[15]._project_conv.weight)
    _, pair_maps = predict_maps(pair, feats, idx, two)
    with torch.no_grad():
        pair_whole, _ = pair.lesion_maps(torch.from_numpy(np.stack(films)))
    np.testing.assert_allclose(pair_maps, pair_whole.numpy(), rtol=1e-2, atol=0.05)
    assert np.abs(pair_maps - maps).max() > 1e-3
    fresh = LiteLesionNet(**two.net_kwargs())  # the exported shape loads strictly
    fresh.load_state_dict(pair.state_dict(), strict=True)
