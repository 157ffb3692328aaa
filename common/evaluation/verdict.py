"""A plain verdict on a synthetic table: a headline score and green / amber / red flags.

Researchers should not have to read forty numbers to learn that a release is useless: a
synthetic table whose models rank real patients the wrong way round, or whose outcome
column holds one value, must be called out as such. The flags come from the evaluation
against real rows, so the verdict is part of the local report, never of a release.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

Level = Literal["green", "amber", "red"]
LEVELS: tuple[Level, ...] = ("green", "amber", "red")
SUMMARY = {
    "green": "usable: no warning sign; still check the flags that matter for your question",
    "amber": "usable with care: read the amber flags before drawing conclusions",
    "red": "not usable for conclusions: see the red flags",
}


@dataclass(frozen=True)
class Flag:
    area: Literal["fidelity", "utility", "privacy"]
    level: Level
    message: str


@dataclass(frozen=True)
class Verdict:
    score: float  # 0 (useless) .. 1 (as good as the real rows); see :func:`judge`
    level: Level
    summary: str
    flags: list[Flag]

    def to_dict(self) -> dict[str, object]:
        return {"score": self.score, "level": self.level, "summary": self.summary,
                "flags": [asdict(flag) for flag in self.flags]}


def _utility_flags(utility: dict, majority_rate: float | None) -> tuple[list[Flag], float | None]:
    flags: list[Flag] = []
    ratios = []
    for model, scores in utility.items():
        name = model.replace("_", " ")
        tstr, trtr = scores["tstr"]["roc_auc"], scores["trtr"]["roc_auc"]
        ratios.append(max(0.0, (tstr - 0.5) / max(trtr - 0.5, 1e-6)))
        if tstr < 0.45:
            flags.append(Flag("utility", "red", f"{name}: ROC-AUC {tstr:.2f} < 0.5, a reversed relationship: trained "
                                                "on the synthetic rows it ranks real patients the wrong way round"))
        elif tstr < 0.55:
            flags.append(Flag("utility", "red", f"{name}: ROC-AUC {tstr:.2f}, no better than chance"))
        elif tstr < 0.9 * trtr:
            flags.append(Flag("utility", "amber", f"{name}: ROC-AUC {tstr:.2f} against {trtr:.2f} on real rows"))
        accuracy = scores["tstr"]["accuracy"]
        if majority_rate is not None and accuracy < majority_rate - 0.01:
            flags.append(Flag("utility", "amber", f"{name}: accuracy {accuracy:.2f} is below always predicting the "
                                                  f"most common outcome ({majority_rate:.2f})"))
    return flags, (min(1.0, sum(ratios) / len(ratios)) if ratios else None)


def _fidelity_flags(fidelity: dict) -> list[Flag]:
    flags: list[Flag] = []
    collapsed = [name for name, c in fidelity["columns"].items() if c["value"] >= 0.8]
    poor = [name for name, c in fidelity["columns"].items() if 0.4 <= c["value"] < 0.8]
    if collapsed:
        flags.append(Flag("fidelity", "red", f"distribution collapsed or shifted (distance >= 0.8): "
                                             f"{', '.join(collapsed)}"))
    if poor:
        flags.append(Flag("fidelity", "amber", f"poorly matched columns (distance 0.4-0.8): {', '.join(poor)}"))
    detection = fidelity["detection_auc"]
    if detection >= 0.9:
        flags.append(Flag("fidelity", "amber", f"a classifier tells synthetic from real rows (AUC {detection:.2f}): "
                                               "individual rows do not look real; aggregate use is safer"))
    return flags


def _privacy_flags(privacy: dict, epsilon: float | None) -> tuple[list[Flag], float]:
    flags: list[Flag] = []
    attack = privacy["membership_attack_auc"]
    if attack >= 0.75:
        flags.append(Flag("privacy", "red", f"membership attack AUC {attack:.2f}: synthetic rows reveal who trained"))
    elif attack >= 0.6:
        flags.append(Flag("privacy", "amber", f"membership attack AUC {attack:.2f} (0.5 reveals nothing)"))
    if privacy["excess_copy_share"] > 0.01:
        flags.append(Flag("privacy", "amber", f"{privacy['exact_copy_share']:.1%} of synthetic rows copy a "
                                              f"training row exactly, against {privacy['holdout_copy_share']:.1%} "
                                              "of new patients"))
    if privacy["dcr_ratio"] < 1.0:
        flags.append(Flag("privacy", "amber", f"synthetic rows lie closer to training rows than new patients do "
                                              f"(DCR ratio {privacy['dcr_ratio']:.2f})"))
    if epsilon is not None and epsilon > 10:
        flags.append(Flag("privacy", "amber", f"epsilon {epsilon:g} per site is a weak formal guarantee"))
    return flags, max(0.0, 1.0 - 2.0 * max(0.0, attack - 0.5))


def judge(fidelity: dict, utility: dict, privacy: dict, majority_rate: float | None = None,
          epsilon: float | None = None) -> Verdict:
    """Flags per area and a headline score: the mean of the fidelity score, the utility share
    of the real rows' lift over chance (ROC-AUC), and one minus the attack's advantage."""
    utility_flags, utility_score = _utility_flags(utility, majority_rate)
    privacy_flags, privacy_score = _privacy_flags(privacy, epsilon)
    flags = _fidelity_flags(fidelity) + utility_flags + privacy_flags
    parts = [fidelity["overall_score"], privacy_score] + ([utility_score] if utility_score is not None else [])
    level = max((flag.level for flag in flags), key=LEVELS.index, default="green")
    return Verdict(round(float(sum(parts) / len(parts)), 3), level, SUMMARY[level], flags)
