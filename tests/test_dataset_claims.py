"""A bare `--data FOLDER` goes to the one dataset plugin that claims it: PhysioNet's layouts
and a third party's alike, with clear errors when nobody, or more than one, claims it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from test_plugins import make_plugin

import ichbench_plugins.datasets as builtin_datasets
from ichbench.blame import unwrap
from ichbench.data.physionet import PhysioNetSource
from ichbench.data.resolve import dataset_entry, resolve_dataset
from ichbench.errors import DataError, PluginError
from ichbench.interfaces import LoadOptions
from ichbench.plugins import Plugins
from ichbench.registry import Registry, created_by, plugin_versions
from ichbench.spec import Spec

MARKER = "SCANNER.json"


@dataclass
class MarkedFolder:
    """A third party's dataset: any folder holding a marker file."""

    root: Path
    name: str = "marked"

    def load(self, options, cache_dir, progress=None):
        raise NotImplementedError


def marked(spec: Spec) -> MarkedFolder:
    return MarkedFolder(Path(spec.args[0]))


def claims_marked(path: Path) -> bool:
    return (path / MARKER).is_file()


def registry_with(*datasets) -> Registry:
    """The built-in datasets plus third-party ones: (name, factory, claims) each."""

    def register_datasets(register):
        for name, factory, claims in datasets:
            register(name, factory, claims=claims)

    plugins = Plugins(load_entry_points=False)
    plugins.register(
        builtin_datasets, name="ichbench_plugins.datasets", distribution="ichbench", version="0.1.0"
    )
    plugins.register(
        make_plugin(register_datasets=register_datasets),
        name="scanner_plugin",
        distribution="ichbench-scanner",
        version="2.0",
    )
    return plugins.registry


@pytest.fixture
def marked_dir(tmp_path) -> Path:
    folder = tmp_path / "a,folder"  # a comma must survive: it is not an argument separator
    folder.mkdir()
    (folder / MARKER).write_text("{}")
    return folder


def test_a_third_party_layout_is_found_by_its_claim(marked_dir):
    registry = registry_with(("marked", marked, claims_marked))
    source = resolve_dataset(str(marked_dir), registry)
    assert isinstance(unwrap(source), MarkedFolder) and source.root == marked_dir
    assert created_by(source).distribution == "ichbench-scanner"
    assert plugin_versions(registry, [("dataset", str(marked_dir))]) == {"ichbench-scanner": "2.0"}


def test_physionet_claims_either_release(jpg_sample_dir, tmp_path):
    registry = registry_with(("marked", marked, claims_marked))
    assert isinstance(resolve_dataset(str(jpg_sample_dir), registry), PhysioNetSource)
    nifti = tmp_path / "v13"
    (nifti / "ct_scans").mkdir(parents=True)
    (nifti / "hemorrhage_diagnosis_raw_ct.csv").write_text("PatientNumber,SliceNumber\n")
    entry, spec = dataset_entry(str(nifti), registry)
    assert (entry.name, spec) == ("physionet", Spec("physionet", (str(nifti),)))


def test_half_a_physionet_folder_is_claimed_so_its_reader_says_what_is_missing(tmp_path):
    half = tmp_path / "half"
    (half / "ct_scans").mkdir(parents=True)
    source = resolve_dataset(str(half), registry_with())
    with pytest.raises(DataError, match="found ct_scans/ but not its label file"):
        source.load(LoadOptions(), tmp_path / "cache")


def test_two_claimants_are_named(marked_dir):
    registry = registry_with(
        ("marked", marked, claims_marked), ("also-marked", marked, claims_marked)
    )
    with pytest.raises(PluginError) as info:
        resolve_dataset(str(marked_dir), registry)
    message = str(info.value)
    assert message.startswith(f"Dataset folder {marked_dir} is claimed by ")
    assert "'also-marked' (scanner_plugin, ichbench-scanner)" in message
    assert "'marked' (scanner_plugin, ichbench-scanner)" in message
    assert message.endswith("choose one as NAME:PATH")
    assert isinstance(resolve_dataset(f"marked:{marked_dir}", registry).root, Path)


def test_an_unclaimed_folder_names_the_folder_and_the_datasets(tmp_path):
    registry = registry_with(("marked", marked, claims_marked))
    with pytest.raises(DataError) as info:
        resolve_dataset(str(tmp_path), registry)
    assert str(info.value) == (
        f"Dataset folder {tmp_path} is in no layout a registered "
        "dataset recognises (cq500, dicom, marked, physionet, rsna, synthetic); give "
        "NAME:PATH to choose one and see what it misses"
    )


def test_a_claim_that_raises_is_blamed(tmp_path):
    def broken_claim(path: Path) -> bool:
        return path.name.startswith(None)  # TypeError

    registry = registry_with(("marked", marked, broken_claim))
    with pytest.raises(
        PluginError,
        match=r"^Dataset 'marked' from ichbench-scanner 2.0 failed "
        r"in claims: TypeError: ",
    ):
        resolve_dataset(str(tmp_path), registry)


@pytest.mark.parametrize(
    "kind_hook, claims",
    [("register_strategies", claims_marked), ("register_datasets", "not callable")],
)
def test_claims_are_for_datasets_and_callable(kind_hook, claims):
    def hook(register):
        register("x", marked, claims=claims)

    plugins = Plugins(load_entry_points=False)
    plugins.register(make_plugin(**{kind_hook: hook}), name="claimer")
    with pytest.raises(PluginError, match="claims= for 'x' must be a callable"):
        _ = plugins.registry


def test_a_registered_name_wins_over_a_folder_of_that_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "synthetic").mkdir()
    assert resolve_dataset("synthetic", registry_with()).name.startswith("synthetic:")
