"""Dataset layouts and label schemes: each layout is found, loads like its source, exports its own labels."""

from __future__ import annotations

import tarfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from brats_utils import cli, config, datasets, download, pipeline
from brats_utils.config import InferenceSettings, PreprocessingSettings
from brats_utils.datasets import LAYOUTS, detect_layout, find_brats2020, find_dataset
from brats_utils.errors import BratsError, DatasetNotFoundError, LabelValueError, ProfileError
from brats_utils.inference import predict_folder
from brats_utils.io import Case, export_segmentation, load_case, read_labels
from brats_utils.labels import BRATS2020, BRATS2023, MSD_TASK01, check_scheme, to_train_labels
from brats_utils.lesion_metrics import LESIONWISE_PROTOCOL, get_protocol
from brats_utils.metrics import BRATS2020_PROTOCOL, evaluate
from brats_utils.model import UNet3D
from brats_utils.regions import predictor_for
from brats_utils.synthetic import read_case_map, write_layout

OTHER_LAYOUTS = ("brats2021", "brats2023", "msd")
SCHEMES = {"brats2020": BRATS2020, "brats2021": BRATS2020, "brats2023": BRATS2023, "msd": MSD_TASK01}


@pytest.fixture(scope="session")
def layout_roots(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The session's synthetic dataset re-saved in every other layout (plus the source itself)."""
    base = tmp_path_factory.mktemp("layouts")
    roots = {name: write_layout(synthetic_root, base / name, name) for name in OTHER_LAYOUTS}
    return {"brats2020": synthetic_root, **roots}


def source_cases(synthetic_root: Path) -> dict[str, Case]:
    return {case.case_id: case for split in datasets.SPLITS for case in find_brats2020(synthetic_root, split)}


def test_every_profile_dataset_has_a_layout():
    assert tuple(LAYOUTS) == ("brats2020", "brats2021", "brats2023", "msd")
    assert {name: layout.scheme for name, layout in LAYOUTS.items()} == SCHEMES


@pytest.mark.parametrize("name", ["brats2020", *OTHER_LAYOUTS])
def test_each_layout_is_recognised_from_its_folders(layout_roots, name):
    assert detect_layout(layout_roots[name]).name == name
    cases = find_dataset(layout_roots[name])
    assert cases and all(case.scheme is SCHEMES[name] and case.seg is not None for case in cases)
    assert all(case.seg is None for case in find_dataset(layout_roots[name], "validation"))


def test_file_names_follow_each_dataset(layout_roots):
    gli = find_dataset(layout_roots["brats2023"])[0]
    assert gli.case_id == "BraTS-GLI-00000-000"
    assert {m: p.name for m, p in gli.modalities.items()} == {
        m: f"BraTS-GLI-00000-000-{part}.nii.gz" for m, part in
        {"flair": "t2f", "t1": "t1n", "t1ce": "t1c", "t2": "t2w"}.items()}
    assert gli.seg.name == "BraTS-GLI-00000-000-seg.nii.gz"
    b21 = find_dataset(layout_roots["brats2021"])[0]
    assert b21.case_id == "BraTS2021_00000" and b21.seg.name == "BraTS2021_00000_seg.nii.gz"
    msd = find_dataset(layout_roots["msd"])[0]
    assert msd.case_id == "BRATS_001" and msd.image_4d.parent.name == "imagesTr"
    assert msd.seg.parent.name == "labelsTr" and nib.load(msd.image_4d).shape[3] == 4
    assert (layout_roots["msd"] / "Task01_BrainTumour" / "dataset.json").is_file()


@pytest.mark.parametrize("name", OTHER_LAYOUTS)
def test_each_layout_loads_the_arrays_and_training_labels_of_its_source(layout_roots, synthetic_root, name):
    sources = source_cases(synthetic_root)
    case_map = read_case_map(layout_roots[name])
    cases = [case for split in datasets.SPLITS for case in find_dataset(layout_roots[name], split)]
    assert len(cases) == len(sources) == len(case_map)
    for case in cases:
        loaded, source = load_case(case), load_case(sources[case_map[case.case_id]])
        np.testing.assert_array_equal(loaded.image, source.image)
        np.testing.assert_allclose(loaded.affine, source.affine)
        if source.labels is None:
            assert loaded.labels is None
            continue
        assert set(np.unique(loaded.labels)) <= set(SCHEMES[name].file_labels)
        np.testing.assert_array_equal(to_train_labels(loaded.labels, scheme=case.scheme),
                                      to_train_labels(source.labels, scheme=BRATS2020))


@pytest.mark.parametrize("name", ["brats2020", *OTHER_LAYOUTS])
def test_export_writes_the_dataset_own_labels_and_reads_back(layout_roots, name, tmp_path):
    layout = LAYOUTS[name]
    case = find_dataset(layout_roots[name])[0]
    loaded = load_case(case)
    train = to_train_labels(loaded.labels, scheme=case.scheme)
    out = export_segmentation(train, tmp_path / layout.prediction_name(case.case_id), affine=loaded.affine,
                              header=loaded.header, scheme=case.scheme)
    assert out.name == f"{case.case_id}.nii.gz"
    saved = nib.load(out)
    assert saved.shape == loaded.labels.shape and saved.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(read_labels(out, scheme=case.scheme)[0], loaded.labels)


def test_msd_swaps_oedema_and_non_enhancing_tumour(layout_roots, synthetic_root):
    msd = find_dataset(layout_roots["msd"])[0]
    source = load_case(source_cases(synthetic_root)[read_case_map(layout_roots["msd"])[msd.case_id]])
    labels = load_case(msd).labels
    for file_2020, file_msd in {1: 2, 2: 1, 4: 3, 0: 0}.items():
        assert np.array_equal(source.labels == file_2020, labels == file_msd)


def test_a_model_predicts_another_dataset_in_that_dataset_labels(layout_roots, synthetic_root, tmp_path):
    """A network (fixed weights, standing in for one trained on BraTS 2020) segments MSD cases as MSD."""
    torch.manual_seed(0)
    model = UNet3D(base_filters=4, levels=2, units_per_block=1, dropout=0.0)
    settings = (InferenceSettings(patch_size=(16, 16, 16), sw_batch_size=1), PreprocessingSettings(margin=1))
    model = predictor_for(model, precision="fp32")
    msd_case = find_dataset(layout_roots["msd"])[0]
    source = source_cases(synthetic_root)[read_case_map(layout_roots["msd"])[msd_case.case_id]]
    (msd_path,) = predict_folder(model, [msd_case], tmp_path / "msd", *settings, progress=False)
    (src_path,) = predict_folder(model, [source], tmp_path / "brats2020", *settings, progress=False)
    assert msd_path.name == "BRATS_001.nii.gz"
    msd_pred = np.asanyarray(nib.load(msd_path).dataobj)
    src_pred = np.asanyarray(nib.load(src_path).dataobj)
    assert set(np.unique(msd_pred).tolist()) <= {0, 1, 2, 3}
    assert len(np.unique(msd_pred)) > 1  # the test means something only if the model outputs tumour
    np.testing.assert_array_equal(to_train_labels(msd_pred, scheme=MSD_TASK01),
                                  to_train_labels(src_pred, scheme=BRATS2020))
    per_case, _ = evaluate(tmp_path / "msd", [msd_case], progress=False)  # read and scored as MSD labels
    assert 0.0 <= per_case.loc["BRATS_001", "Dice_WT"] <= 1.0


def test_labels_of_another_scheme_name_case_values_and_likely_scheme(layout_roots):
    gli = find_dataset(layout_roots["brats2023"])[0]
    misread = Case(gli.case_id, gli.modalities, gli.seg, gli.folder, scheme=BRATS2020)
    with pytest.raises(LabelValueError) as caught:
        load_case(misread)
    message = str(caught.value)
    assert gli.case_id in message and "{0, 1, 2, 3}" in message and "BraTS 2023" in message
    assert "unexpected label values [3]" in message and "BraTS 2020" in message
    with pytest.raises(LabelValueError, match=r"fit no declared label scheme"):
        check_scheme(np.array([0, 7], np.uint8), BRATS2020, case_id="x")
    check_scheme(np.array([0, 1, 2, 3], np.uint8), MSD_TASK01)  # fits: no error


def test_a_named_dataset_that_is_not_there_says_what_is(layout_roots):
    with pytest.raises(DatasetNotFoundError, match=
                       "no BraTS 2021 training cases found; the folder holds BraTS 2023"):
        find_dataset(layout_roots["brats2023"], dataset="brats2021")
    with pytest.raises(DatasetNotFoundError, match="unknown dataset"):
        find_dataset(layout_roots["brats2023"], dataset="brats2019")


def test_two_datasets_in_one_folder_must_be_named(layout_roots, tmp_path):
    for name in ("brats2021", "brats2023"):
        (tmp_path / name).symlink_to(layout_roots[name], target_is_directory=True)
    with pytest.raises(BratsError, match="more than one dataset"):
        detect_layout(tmp_path)
    assert find_dataset(tmp_path, dataset="brats2023")[0].scheme is BRATS2023


def test_msd_resource_forks_are_ignored(layout_roots, tmp_path):
    import shutil

    root = tmp_path / "msd"
    shutil.copytree(layout_roots["msd"], root)
    (root / "Task01_BrainTumour" / "imagesTr" / "._BRATS_001.nii.gz").write_bytes(b"\0" * 4096)
    assert [c.case_id for c in find_dataset(root)] == [c.case_id for c in find_dataset(layout_roots["msd"])]


def test_brats2021_download_unpacks_the_kaggle_tar(layout_roots, tmp_path, monkeypatch):
    import kagglehub

    kaggle = tmp_path / "kaggle"
    kaggle.mkdir()
    with tarfile.open(kaggle / "BraTS2021_Training_Data.tar", "w") as tar:
        for folder in (layout_roots["brats2021"] / "BraTS2021_Training_Data").iterdir():
            tar.add(folder, arcname=folder.name)
    monkeypatch.setattr(kagglehub, "dataset_download", lambda handle, **_: str(kaggle))
    root = download.download_brats2021(tmp_path / "unpacked")
    assert detect_layout(root).name == "brats2021"
    assert len(find_dataset(root)) == len(find_dataset(layout_roots["brats2021"]))


# --- profiles, the command line and the metrics protocol ------------------------------------


def test_profiles_take_a_dataset_and_report_its_protocol():
    ci = config.get_profile("ci")
    protocol = pipeline.metrics_protocol
    assert ci.dataset == "brats2020" and protocol(ci).name == "brats2020"
    assert protocol(ci.with_overrides(dataset="brats2023")).name == "lesionwise"
    assert protocol(ci.with_overrides(dataset="msd")).name == "brats2020"
    assert protocol(ci.with_overrides(dataset="brats2023", metrics_protocol="brats2020")).name == "brats2020"
    assert ci.with_overrides(dataset="msd").cache_dir != ci.cache_dir
    assert ci.with_overrides(dataset="msd").run_dir.name == "ci-msd"
    with pytest.raises(ProfileError, match="dataset cannot be 'brats2019'"):
        pipeline.check_registered(ci.with_overrides(dataset="brats2019"))
    assert get_protocol("lesionwise") is LESIONWISE_PROTOCOL
    assert get_protocol("brats2020") is BRATS2020_PROTOCOL
    with pytest.raises(ProfileError, match="unknown metrics protocol"):
        get_protocol("dice")


def test_cli_selects_the_dataset_and_the_protocol():
    parser = cli.build_parser()
    args = parser.parse_args(["cache", "--profile", "ci", "--dataset", "brats2023"])
    assert cli.profile_from_args(args).dataset == "brats2023"
    args = parser.parse_args(["train", "--profile", "ci", "--dataset", "msd", "--set", "dataset=brats2021"])
    assert cli.profile_from_args(args).dataset == "brats2021"  # --set wins
    args = parser.parse_args(["evaluate", "preds", "--profile", "ci", "--protocol", "lesionwise"])
    assert args.protocol == "lesionwise"
    with pytest.raises(SystemExit):
        parser.parse_args(["cache", "--dataset", "brats2019"])


def test_cli_download_of_a_dataset_that_cannot_be_downloaded_says_where(monkeypatch, capsys):
    monkeypatch.delenv("BRATS_ROOT", raising=False)
    assert cli.main(["download", "--dataset", "brats2023"]) == 2
    assert "Synapse" in capsys.readouterr().err


def test_synthetic_profiles_write_their_dataset_layout(tmp_path, monkeypatch):
    monkeypatch.delenv("BRATS_ROOT", raising=False)
    monkeypatch.setenv("BRATS_DATA_DIR", str(tmp_path))
    profile = config.get_profile("ci").with_overrides(
        dataset="brats2023", synthetic_shape=(40, 40, 24), synthetic_train_cases=2, synthetic_val_cases=1)
    cases = pipeline.training_cases(profile)
    assert [c.case_id for c in cases] == ["BraTS-GLI-00000-000", "BraTS-GLI-00001-000"]
    assert all(c.scheme is BRATS2023 for c in cases)
    assert detect_layout(pipeline.ensure_dataset(profile)).name == "brats2023"


def test_real_datasets_that_cannot_be_downloaded_say_where_to_get_them(monkeypatch):
    monkeypatch.delenv("BRATS_ROOT", raising=False)
    profile = config.get_profile("ci").with_overrides(data_source="real")
    with pytest.raises(DatasetNotFoundError, match="Synapse"):
        pipeline.ensure_dataset(profile.with_overrides(dataset="brats2023"))
    with pytest.raises(DatasetNotFoundError, match="DecathlonDataset"):
        pipeline.ensure_dataset(profile.with_overrides(dataset="msd"))


@pytest.mark.parametrize("name", ["brats2023", "msd"])
def test_evaluate_reads_each_dataset_labels_under_either_protocol(layout_roots, name, tmp_path):
    cases = find_dataset(layout_roots[name])
    for case in cases:  # perfect predictions, in the dataset's own labels
        loaded = load_case(case)
        train = to_train_labels(loaded.labels, scheme=case.scheme)
        out = tmp_path / LAYOUTS[name].prediction_name(case.case_id)
        export_segmentation(train, out, affine=loaded.affine, scheme=case.scheme)
    regions, _ = evaluate(tmp_path, find_dataset(layout_roots[name]), progress=False)
    lesions, _ = evaluate(tmp_path, cases, progress=False, protocol=LESIONWISE_PROTOCOL)
    assert (regions[["Dice_WT", "Dice_TC", "Dice_ET"]] == 1.0).all().all()
    assert (lesions[["LesionWise_Dice_WT", "LesionWise_Dice_TC", "LesionWise_Dice_ET"]] == 1.0).all().all()
    assert (lesions[[f"Num_FN_{r}" for r in ("WT", "TC", "ET")]] == 0).all().all()


def test_one_large_lesion_found_and_two_small_missed_disagree():
    truth = np.zeros((48, 48, 48), np.uint8)
    truth[8:28, 8:28, 8:28] = 2  # one large oedema lesion, 8000 voxels
    truth[36:41, 36:41, 36:41] = 2  # two small ones, 125 voxels each, far away
    truth[36:41, 5:10, 36:41] = 2
    pred = np.zeros_like(truth)
    pred[8:28, 8:28, 8:28] = 2  # only the large one is found
    region = BRATS2020_PROTOCOL.score(pred, truth)["Dice_WT"]
    lesion = LESIONWISE_PROTOCOL.score(pred, truth)
    assert region > 0.95 and abs(lesion["LesionWise_Dice_WT"] - 1 / 3) < 1e-9
    assert lesion["Num_TP_WT"] == 1 and lesion["Num_FN_WT"] == 2


def test_checkpoints_from_before_the_dataset_field_still_resume(tmp_path):
    from brats_utils.checkpoints import check_compatible
    from brats_utils.errors import CheckpointError

    profile = config.get_profile("ci")
    old = {"config": {key: value for key, value in profile.as_dict().items()
                      if key not in ("dataset", "metrics_protocol")}}
    path = tmp_path / "last.pt"
    check_compatible(old, profile.as_dict(), path)  # the new fields at their defaults: the same run
    evaluation_only = profile.with_overrides(metrics_protocol="lesionwise")
    check_compatible(old, evaluation_only.as_dict(), path)
    with pytest.raises(CheckpointError, match="dataset"):
        check_compatible(old, profile.with_overrides(dataset="msd").as_dict(), path)
