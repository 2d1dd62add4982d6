"""What a run is about to do, said before it starts: the configuration as resolved (what
`--preset auto` became, the device, the dataset, the network and the recipe), so a user
sees a surprise before hours of training rather than after."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ichbench.config import preset_for_device

if TYPE_CHECKING:
    from ichbench.config import RunConfig
    from ichbench.interfaces import BuiltModel
    from ichbench.protocol import RunProtocol


def _preset(asked: RunConfig, cfg: RunConfig) -> str:
    if asked.preset == cfg.preset:
        return cfg.preset
    return f"{cfg.preset} ({asked.preset} on {cfg.device})"


def _weights(built: BuiltModel | None, cfg: RunConfig) -> str:
    if built is None:
        wanted = "pretrained weights wanted" if cfg.pretrained else "random initialisation"
        return f"{wanted} (checked when the first fold is built)"
    if built.pretrained:
        return f"pretrained weights found: {built.pretrained_source}"
    if cfg.pretrained:
        return "pretrained weights NOT found: random initialisation"
    return "random initialisation"


def resolved_lines(
    asked: RunConfig, protocol: RunProtocol, built: BuiltModel | None = None
) -> list[tuple[str, str]]:
    """(field, value) pairs of the resolved configuration, for the terminal. `built`: the
    first fold's network, when it was built to say whether weights were found."""
    from ichbench.views.provenance import recipe_text, seed_text

    cfg = protocol.cfg
    split = (
        f"{cfg.outer} outer folds × {cfg.folds} folds"
        if cfg.outer > 1
        else f"{cfg.folds} folds, {cfg.test_size:g} of the patients held out for test"
    )
    auto = preset_for_device(asked.preset, cfg.device)
    return [
        ("Preset", _preset(asked, cfg) if auto == cfg.preset else cfg.preset),
        ("Device", cfg.device),
        ("Dataset", str(cfg.data)),
        ("Network", f"{cfg.backbone} at {cfg.image_size} px; {_weights(built, cfg)}"),
        (
            "Training",
            f"at most {cfg.epochs} epoch{'s' if cfg.epochs != 1 else ''} "
            f"(patience {cfg.patience}), batch {cfg.batch_size}, "
            f"lr {cfg.lr:g}",
        ),
        ("Windows", ", ".join(cfg.windows or [])),
        ("Strategies", ", ".join(cfg.typed_specs()) or "none"),
        ("Recipe", recipe_text(cfg.as_dict(), [])),
        ("Ensemble / patient rule", f"{cfg.ensemble} / {cfg.patient_rule}"),
        ("Split", split),
        ("Seed", seed_text(cfg.seed, cfg.split_seed)),
        ("Config hash", cfg.hash),
    ]
