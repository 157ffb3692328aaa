"""A plain verdict on a synthetic table: a headline score and green / amber / red flags.

Researchers should not have to read forty numbers to learn that a release is useless: a
synthetic table whose models rank real patients the wrong way round, whose outcome column
holds one value, whose numeric columns are squeezed to a fraction of their spread, whose main
effects have faded or flipped, or whose missing values no longer follow the real pattern, must
be called out as such. The flags come from the evaluation against real rows, so the verdict is
part of the local report, never of a release.

Levels, and why (each threshold is a module constant below):

* red, not usable for conclusions:
  - a numeric column's standard deviation (on the schema's scale) halved or doubled: every
    spread, range and tail a researcher reads off it is wrong by at least 2x;
  - a categorical column collapsed to one value (99 % or more of the synthetic rows) where
    the real rows hold 5 % or more of other values;
  - a column's KS / total-variation distance 0.5 or more (half of its mass misplaced);
  - a main effect on the outcome reversed, shrunk under a third, or inflated over three times,
    with the difference beyond sampling noise (z >= 3). Main effects are defined on the real
    rows (metrics.main_effects): the five features, one per column, most correlated with the
    outcome (point-biserial r for a numeric column on the schema's scale, or for its top or
    bottom tail of about a tenth, where an effect held in a tail shows; phi for a category or a missing
    value), and only those clearly non-zero there (|r| >= 0.1 and z >= 4);
  - a relation between two other columns turned round (metrics.relations: for the eight
    strongest pairs of columns, one per pair, the strongest signed correlation between their
    values or categories, clearly non-zero on the real rows), beyond sampling noise;
  - a relation between two other columns made up: |r| >= 0.3 on the synthetic rows where the
    real rows hold under 0.1, beyond sampling noise (metrics.made_up_relations: the five
    strongest; amber from 0.1);
  - a strong dependence of a column's missingness (|r| >= 0.3 in the real rows between its
    missing indicator and another column's value, category or missingness, e.g. missing for
    every patient of one group) reversed or reproduced at under a third;
  - models trained on the synthetic rows keep under half of the real rows' lift of ROC-AUC
    over chance on average, any one is no better than chance or reversed, or two or more fall
    below always predicting the most common outcome (where the real rows' model does not);
  - a membership attack with ROC-AUC 0.75 or more.
* amber, usable with care: the same signs, smaller (spread off by 1.5x, a main effect or a
  missingness dependence at under two thirds, a relation between two other columns lost, at
  under two thirds or over 1.5 times, a model at under 90 % of the real rows' AUC, a
  category with 2 %+ of real rows 5x rarer, or rare categories made common, a pile at a schema
  bound lost or made up, a tail beyond the real 1st or 99th percentile cut or made up (5x, on
  1,000 rows a side), a missing share off by 0.15, or by 0.05 and 2x),
  KS / total variation 0.3-0.5, detectable rows, weaker privacy signals, epsilon above 10.
* green: none of these.

The headline score is the mean of three components (fidelity, utility, privacy), capped by
the level: at most 0.7 with an amber flag and 0.4 with a red one, so a score can never read
better than the flags say.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Level = Literal["green", "amber", "red"]
LEVELS: tuple[Level, ...] = ("green", "amber", "red")
SUMMARY = {
    "green": "usable: no warning sign; still check the flags that matter for your question",
    "amber": "usable with care: read the amber flags before drawing conclusions",
    "red": "not usable for conclusions: see the red flags",
}
SCORE_CAP: dict[str, float] = {"green": 1.0, "amber": 0.7, "red": 0.4}

DISTANCE_RED, DISTANCE_AMBER = 0.5, 0.3  # KS / total variation of one column
SPREAD_RED, SPREAD_AMBER = 2.0, 1.5  # synthetic / real sd, either way
COLLAPSED_SHARE = 0.99  # one category holds this much of the synthetic rows ...
SEVERAL_SHARE = 0.05  # ... while the real rows hold at least this much outside it
LOST_CATEGORY_SHARE, LOST_CATEGORY_FACTOR = 0.02, 5.0  # a category this common in real rows, 5x rarer
RARE_CATEGORY_SHARE = 0.01  # a category under this share of real rows is rare; the rare ones together ...
INFLATED_GAP = 0.02  # ... or one category 5x more common, by at least this share of the rows, is made common
SHARE_ROWS = 50  # a share of rows with a value judged only where each side has this many
TAIL_ROWS = 1000  # a tail (1 % of the rows) judged only where each side has this many rows with a value
TAIL_SHARE_JUDGED = 0.005  # ... and the real rows hold at least this share beyond the percentile
EFFECT_RED, EFFECT_AMBER = 3.0, 1.5  # synthetic / real association: under 1/3 or over 3x is red
EFFECT_Z = 3.0  # and the difference beyond sampling noise
STRONG_MISSINGNESS = 0.3  # |r| of a missing indicator with another column: a strong dependence
MADE_UP_RED = 0.3  # |r| of a relation the synthetic rows hold and the real rows do not: red from here
MISSING_SHARE_GAP = 0.15  # absolute difference of a missing share that is always amber
LIFT_RED = 0.5  # mean share of the real rows' ROC-AUC lift over 0.5 kept by the synthetic rows
TSTR_AMBER = 0.9  # one model's TSTR AUC under this share of its TRTR AUC
MAJORITY_RED = 2  # models below always predicting the most common outcome
SIGNAL_AUC = 0.55  # a model whose real rows (TRTR) reach no more carries no signal to judge
RECORDED_AUC = 0.99  # a model whose real rows reach this likely reads a column that records the outcome


@dataclass(frozen=True)
class Flag:
    area: Literal["fidelity", "effects", "relations", "missingness", "utility", "privacy"]
    level: Level
    message: str


@dataclass(frozen=True)
class Verdict:
    score: float  # 0 (useless) .. 1 (as good as the real rows), capped by the level; see :func:`judge`
    level: Level
    summary: str
    flags: list[Flag]
    components: dict[str, float] = field(default_factory=dict)  # before the cap: fidelity, utility, privacy

    def to_dict(self) -> dict[str, object]:
        return {"score": self.score, "level": self.level, "summary": self.summary,
                "flags": [asdict(flag) for flag in self.flags], "components": self.components}


def _join(items: list[str]) -> str:
    return "; ".join(items)


# -- utility ----------------------------------------------------------------------------------

def chance_resolution(class_rows: list[int]) -> float:
    """How far from 0.5 a ROC-AUC on held-out rows of ``class_rows`` per outcome class must lie
    to tell it from chance: twice the standard error of an AUC of 0.5 (Hanley and McNeil, 1982)
    of the smallest class against the rest. A newcomer's 42 held-out rows held 4 preterm births:
    an MLP's .29 and a boosted model's .48 were flagged as reversed or at chance, where the real
    rows' own models reached .51-.56."""
    present = [rows for rows in class_rows if rows > 0]
    if len(present) < 2:
        return 0.5
    smallest, rest = min(present), sum(present) - min(present)
    return float(2.0 * math.sqrt((smallest + rest + 1) / (12.0 * smallest * rest)))


def _below_majority(accuracy: float, real_accuracy: float, majority_rate: float, held_out: int | None) -> bool:
    """Whether the synthetic rows' model is less accurate than always predicting the most common
    outcome, and than the real rows' model, by more than an accuracy on ``held_out`` rows moves
    by chance (two standard errors; 0.01 when the count is not known), while the real rows' model
    is not below it by as much. A newcomer's model at .823 against a majority of .836 and a real
    model at .835 (1-2 patients of 758) turned a verdict red, with a text saying the real model
    was not below the majority when it was (helper-107 H1)."""
    margin = 0.01 if not held_out else max(0.01, 2.0 * math.sqrt(majority_rate * (1 - majority_rate) / held_out))
    return accuracy < majority_rate - margin and accuracy < real_accuracy - margin \
        and real_accuracy >= majority_rate - margin


def _utility_flags(utility: dict[str, Any], majority_rate: float | None, resolution: float = 0.0,
                   held_out: int | None = None) -> tuple[list[Flag], float | None]:
    flags: list[Flag] = []
    ratios, below_real, below_majority, unjudged, judged = [], [], [], [], 0
    threshold = max(SIGNAL_AUC, 0.5 + resolution)
    for model, scores in utility.items():
        name = model.replace("_", " ")
        tstr, trtr = scores["tstr"]["roc_auc"], scores["trtr"]["roc_auc"]
        if trtr < threshold:
            unjudged.append(f"{name} ({trtr:.2f})")
            continue  # the real rows themselves teach this model nothing the held-out rows can show
        judged += 1
        ratios.append(max(0.0, (tstr - 0.5) / (trtr - 0.5)))
        if tstr < 0.45:
            flags.append(Flag("utility", "red", f"{name}: ROC-AUC {tstr:.2f} < 0.5, a reversed relationship: trained "
                                                "on the synthetic rows it ranks real patients the wrong way round"))
        elif tstr < 0.55:
            flags.append(Flag("utility", "red", f"{name}: ROC-AUC {tstr:.2f}, no better than chance"))
        elif tstr < TSTR_AMBER * trtr:
            below_real.append(f"{name} {tstr:.2f} against {trtr:.2f}")
        accuracy, real_accuracy = scores["tstr"]["accuracy"], scores["trtr"]["accuracy"]
        if majority_rate is not None and _below_majority(accuracy, real_accuracy, majority_rate, held_out):
            below_majority.append(f"{name} {accuracy:.3f} (on real rows {real_accuracy:.3f})")
    recorded = [model.replace("_", " ") for model, scores in utility.items()
                if scores["trtr"]["roc_auc"] >= RECORDED_AUC]
    if recorded:  # a newcomer's readmission flag, empty for every death: real 1.00, synthetic .9999
        flags.append(Flag("utility", "amber", f"trained on the real rows, {_join(recorded)} predict the outcome "
                                              f"almost perfectly (ROC-AUC {RECORDED_AUC} or more): a column likely "
                                              "records the outcome itself (`fedsyn schema draft` names such columns), "
                                              "and these utility scores measure that link, not the outcome's "
                                              "relations; drop the column and run again"))
    few = ", the least that these held-out rows, few of them in the rarest class, tell from chance" \
        if threshold > SIGNAL_AUC else ""
    if utility and not judged:
        flags.append(Flag("utility", "amber", "even trained on the real rows no model predicts the outcome better "
                                              f"than chance (ROC-AUC < {threshold:.2f}{few}): utility cannot be "
                                              "judged"))
    elif unjudged:  # its synthetic score, shown in the table, says nothing either way: said, not flagged
        flags.append(Flag("utility", "green", f"not judged: {_join(unjudged)}: trained on the real rows, "
                                              f"{'it does' if len(unjudged) == 1 else 'they do'} no better than "
                                              f"chance (ROC-AUC < {threshold:.2f}{few}), so "
                                              f"{'its' if len(unjudged) == 1 else 'their'} synthetic-row scores "
                                              "say nothing of the release"))
    lift = sum(ratios) / len(ratios) if ratios else None
    if lift is not None and lift < LIFT_RED:
        flags.append(Flag("utility", "red", f"models trained on the synthetic rows keep {lift:.0%} of the real rows' "
                                            "ROC-AUC lift over chance on average (under half): conclusions drawn "
                                            "from them would not hold on real patients"))
    if below_real:
        flags.append(Flag("utility", "amber", f"ROC-AUC under {TSTR_AMBER:.0%} of the real rows' (TSTR against "
                                              f"TRTR): {_join(below_real)}"))
    if below_majority:
        level: Level = "red" if len(below_majority) >= MAJORITY_RED else "amber"
        flags.append(Flag("utility", level, f"accuracy below always predicting the most common outcome "
                                            f"({majority_rate:.3f}), beyond what chance in the held-out rows "
                                            "moves an accuracy, where the real rows' model is not: "
                                            f"{_join(below_majority)}"))
    return flags, (min(1.0, lift) if lift is not None else None)


# -- fidelity: distances, spread, categories --------------------------------------------------

def _columns_flag(level: Level, what: str, columns: list[str]) -> list[Flag]:
    """One fidelity flag naming every column it concerns; none when no column does."""
    return [Flag("fidelity", level, f"{what}: {_join(columns)}")] if columns else []


def _fidelity_flags(fidelity: dict[str, Any]) -> list[Flag]:
    flags: list[Flag] = []
    columns = fidelity["columns"]
    shifted = [f"{name} {c['value']:.2f}" for name, c in columns.items() if c["value"] >= DISTANCE_RED]
    poor = [f"{name} {c['value']:.2f}" for name, c in columns.items() if DISTANCE_AMBER <= c["value"] < DISTANCE_RED]
    flags += _columns_flag("red", f"distribution collapsed or shifted (KS / total variation >= {DISTANCE_RED}: "
                                  "half the mass or more misplaced)", shifted)
    flags += _columns_flag("amber", f"poorly matched columns (KS / total variation {DISTANCE_AMBER}-{DISTANCE_RED})",
                           poor)
    spread_red, spread_amber = [], []
    for name, s in fidelity.get("spread", {}).items():
        ratio = s["ratio"]
        if ratio is None or ratio <= 0:
            if ratio is not None:
                spread_red.append(f"{name} (one value only in the synthetic rows)")
            continue
        factor = max(ratio, 1 / ratio)
        scale = ", log scale" if s["scale"] == "log" else ""
        how = f"{name} (sd {'shrunk' if ratio < 1 else 'grown'} {factor:.1f}x{scale})"
        if factor >= SPREAD_RED:
            spread_red.append(how)
        elif factor >= SPREAD_AMBER:
            spread_amber.append(how)
    flags += _columns_flag("red", f"numeric columns squeezed or blown up (standard deviation off by "
                                  f"{SPREAD_RED:g}x or more)", spread_red)
    flags += _columns_flag("amber", f"numeric columns with the wrong spread (standard deviation off by "
                                    f"{SPREAD_AMBER:g}x-{SPREAD_RED:g}x)", spread_amber)
    collapsed, lost = [], []
    for name, shares in fidelity.get("categories", {}).items():
        real, synthetic = shares["real"], shares["synthetic"]
        top = max(synthetic, key=synthetic.get)
        if synthetic[top] >= COLLAPSED_SHARE and 1.0 - real[top] >= SEVERAL_SHARE:
            collapsed.append(f"{name} ('{top}' in {synthetic[top]:.1%} of synthetic rows, {real[top]:.0%} of "
                             "real ones)")
            continue
        lost += [f"{name} = {level} ({share:.0%} of real rows, {synthetic[level]:.1%} of synthetic)"
                 for level, share in real.items()
                 if share >= LOST_CATEGORY_SHARE and synthetic[level] < share / LOST_CATEGORY_FACTOR]
    flags += _columns_flag("red", "categorical columns collapsed to one value", collapsed)
    flags += _columns_flag("amber", f"categories at least {LOST_CATEGORY_FACTOR:g}x rarer in the synthetic rows", lost)
    flags += _columns_flag("amber", f"categories made common (at least {LOST_CATEGORY_FACTOR:g}x and "
                                    f"{INFLATED_GAP:.0%} of the rows more: the noise of many levels' counts, "
                                    "which a rare level cannot beat)",
                           [how for name, shares in fidelity.get("categories", {}).items() if _enough_rows(shares)
                            for how in _made_common(name, shares["real"], shares["synthetic"])])
    lost_piles, made_piles = [], []
    for name, sides in fidelity.get("bound_piles", {}).items():
        for side, pile in sides.items():
            if not _enough_rows(pile):
                continue
            how = f"{name} = {pile['value']:g}, its {side} bound ({pile['real']:.1%} of real rows with a value, " \
                  f"{pile['synthetic']:.1%} of synthetic)"
            if pile["real"] >= LOST_CATEGORY_SHARE and pile["synthetic"] < pile["real"] / LOST_CATEGORY_FACTOR:
                lost_piles.append(how)
            elif pile["synthetic"] >= LOST_CATEGORY_SHARE and pile["real"] < pile["synthetic"] / LOST_CATEGORY_FACTOR:
                made_piles.append(how)
    flags += _columns_flag("amber", f"values at a schema bound (an assay's limit) at least {LOST_CATEGORY_FACTOR:g}x "
                                    "rarer in the synthetic rows: below the noise the site's tables carry",
                           lost_piles)
    flags += _columns_flag("amber", f"values piled at a schema bound at least {LOST_CATEGORY_FACTOR:g}x more often "
                                    "than in the real rows", made_piles)
    cut, made = [], []
    for name, sides in fidelity.get("extreme_tails", {}).items():
        for side, tail in sides.items():
            if tail["real"] < TAIL_SHARE_JUDGED or not all(tail["rows"].get(label, 0) >= TAIL_ROWS
                                                          for label in ("real", "synthetic")):
                continue  # ties at the percentile can leave a row or two beyond it: no tail to judge
            how = f"{name}, {side} ({tail['real']:.1%} of real rows with a value, {tail['synthetic']:.1%} of synthetic)"
            if tail["synthetic"] < tail["real"] / LOST_CATEGORY_FACTOR:
                cut.append(how)
            elif tail["synthetic"] > tail["real"] * LOST_CATEGORY_FACTOR and \
                    tail["synthetic"] - tail["real"] >= INFLATED_GAP:
                made.append(how)
    flags += _columns_flag("amber", f"tails cut: beyond the real rows' 1st or 99th percentile at least "
                                    f"{LOST_CATEGORY_FACTOR:g}x rarer in the synthetic rows (long stays, extreme "
                                    "labs: the sparse ends sit below the tables' noise)", cut)
    flags += _columns_flag("amber", f"tails made up: beyond the real rows' 1st or 99th percentile at least "
                                    f"{LOST_CATEGORY_FACTOR:g}x more often in the synthetic rows", made)
    detection = fidelity["detection_auc"]
    if detection >= 0.9:
        flags.append(Flag("fidelity", "amber", f"a classifier tells synthetic from real rows (AUC {detection:.2f}): "
                                               "individual rows do not look real; aggregate use is safer"))
    return flags


def _enough_rows(shares: dict[str, Any]) -> bool:
    """Whether the real and the synthetic shares each rest on :data:`SHARE_ROWS` rows with a value
    or more (helper-117: a column empty in every real row, beside one synthetic value, was 'made
    common' from 0 % to 100 %). Reports without counts are judged as before."""
    rows = shares.get("rows", {})
    return all(rows.get(label, SHARE_ROWS) >= SHARE_ROWS for label in ("real", "synthetic"))


def _made_common(name: str, real: dict[str, float], synthetic: dict[str, float]) -> list[str]:
    """A column's categories the synthetic rows hold far more often than the real ones: the
    rare ones (each under :data:`RARE_CATEGORY_SHARE` of real rows) together, and any other
    one on its own. A 40-level diagnosis's twelve rare codes, 1.0 % of real rows, came out at
    13.5 % (helper-114): each level's noisy count keeps what the noise adds, and a rare level's
    count is all noise."""
    def inflated(real_share: float, synthetic_share: float) -> bool:
        return synthetic_share - real_share >= INFLATED_GAP and synthetic_share >= LOST_CATEGORY_FACTOR * real_share

    rare = [level for level, share in real.items() if share < RARE_CATEGORY_SHARE]
    out = []
    real_rare, synthetic_rare = sum(real[level] for level in rare), sum(synthetic[level] for level in rare)
    if len(rare) > 1 and inflated(real_rare, synthetic_rare):
        out.append(f"{name}: {len(rare)} levels each under {RARE_CATEGORY_SHARE:.0%} of real rows with a value "
                   f"({real_rare:.1%} of them together, {synthetic_rare:.1%} of synthetic)")
    out += [f"{name} = {level} ({real[level]:.1%} of real rows with a value, {synthetic[level]:.1%} of synthetic)"
            for level in real if (level not in rare or len(rare) == 1) and inflated(real[level], synthetic[level])]
    return out


# -- main effects and missingness -------------------------------------------------------------

def _change(association: dict[str, Any]) -> tuple[Level | None, str]:
    """How an association of the real rows fares in the synthetic ones: red when reversed,
    under a third or over three times as strong, amber under two thirds or over 1.5 times;
    only where the difference is beyond sampling noise."""
    ratio, z = association["ratio"], association["z_weaker"]
    if ratio is None:
        return None, ""
    if ratio < 1 / EFFECT_AMBER and z >= EFFECT_Z:
        if ratio < 0 and abs(association["synthetic"]) * (association["n_synthetic"] - 3) ** 0.5 >= 2:
            return "red", "reversed"
        return ("red" if ratio < 1 / EFFECT_RED else "amber"), ("lost" if ratio < 0.05 else
                                                                f"shrunk to {ratio:.0%} of real")
    if ratio > EFFECT_AMBER and z <= -EFFECT_Z:
        return ("red" if ratio > EFFECT_RED else "amber"), f"inflated {ratio:.1f}x"
    return None, ""


def _effect_flags(effects: list[dict[str, Any]], outcome: str | None) -> list[Flag]:
    flags = []
    for effect in effects:
        level, how = _change(effect)
        if level is not None:
            flags.append(Flag("effects", level, f"main effect of {effect['feature']} on {outcome or 'the outcome'} "
                                                f"{how}: correlation {effect['real']:+.2f} on real rows, "
                                                f"{effect['synthetic']:+.2f} on synthetic"))
    return flags


def _relation_flags(relations: list[dict[str, Any]]) -> list[Flag]:
    """A relation between two columns other than the outcome (metrics.relations): red when turned
    round, amber when lost, shrunk or inflated. Only a reversal is red: on a wide table at a
    small epsilon many relations fade, and a fading one still answers its question the right way."""
    flags = []
    for relation in relations:
        level, how = _change(relation)
        if level is not None:
            flags.append(Flag("relations", level if how == "reversed" else "amber",
                              f"the relation between {relation['feature']} is {how}: correlation "
                              f"{relation['real']:+.2f} on real rows, {relation['synthetic']:+.2f} on synthetic"))
    return flags


def _made_up_flags(made_up: list[dict[str, Any]]) -> list[Flag]:
    """A relation the synthetic rows hold and the real rows do not (metrics.made_up_relations):
    red from |r| of MADE_UP_RED on, which a researcher would report as a finding; amber below."""
    return [Flag("relations", "red" if abs(relation["synthetic"]) >= MADE_UP_RED else "amber",
                 f"a relation between {relation['feature']} that the real rows do not hold is made up: correlation "
                 f"{relation['real']:+.2f} on real rows, {relation['synthetic']:+.2f} on synthetic")
            for relation in made_up]


def _missingness_flags(missingness: dict[str, Any]) -> list[Flag]:
    flags = []
    for name, entry in missingness.items():
        real, synthetic = entry["missing_real"], entry["missing_synthetic"]
        gap = abs(real - synthetic)
        if gap >= MISSING_SHARE_GAP or (gap >= 0.05 and not real / 2 <= synthetic <= 2 * real):
            flags.append(Flag("missingness", "amber", f"{name} is missing in {real:.0%} of real rows, "
                                                      f"{synthetic:.0%} of synthetic"))
        worst: tuple[int, str] | None = None
        for link in entry["links"]:
            level, how = _change(link)
            if level is None:
                continue
            if level == "red" and (how.startswith("inflated") or abs(link["real"]) < STRONG_MISSINGNESS):
                level = "amber"  # red only where a strong real dependence is lost or turned round
            shares = link.get("missing_share")
            if shares and None not in shares.values():
                detail = (f"missing in {shares['real_with']:.0%} of real rows with {link['feature']} (against "
                          f"{shares['real_without']:.0%} otherwise), {shares['synthetic_with']:.0%} of synthetic "
                          f"ones (against {shares['synthetic_without']:.0%})")
            else:
                detail = (f"correlation of being missing with {link['feature']} {link['real']:+.2f} on real rows, "
                          f"{link['synthetic']:+.2f} on synthetic")
            rank = LEVELS.index(level)
            if worst is None or rank > worst[0]:
                worst = (rank, f"the link between {name} being missing and {link['feature']} is {how}: {detail}")
        if worst is not None:
            flags.append(Flag("missingness", LEVELS[worst[0]], worst[1]))
    return flags


# -- privacy ----------------------------------------------------------------------------------

def dcr_warns(privacy: Mapping[str, Any]) -> bool:
    """Whether synthetic rows lie closer to the training rows than new patients do.

    Two signs, each beyond what drawing new patients gives (about 2 std): the DCR ratio (mean
    distance of synthetic rows to their nearest training row over that of held-out rows) below
    1, its 95 % upper end (``dcr_ratio_upper``) included: a newcomer's release warned at 0.99,
    which new patients drawn from the same rows give as often as 1.01; or more synthetic rows
    than ``dcr_near_share_limit`` nearer a training row than all but 5 % of held-out rows
    (``dcr_near_share``): near-copies of a fifth of the training rows barely move the mean
    over every row, and only the ratio warned in half of such releases. Neither warns when
    both median distances are 0: on a table with few
    distinct rows most synthetic and held-out rows alike match a training row exactly, the
    ratio then compares only the few rows that do not, and the exact matches are what the copy
    shares measure. A synthetic copy share no higher than the held-out rows' is what new
    patients look like (a newcomer's azpro release warned at ratio 0.77 with both medians 0,
    75 % synthetic copies against 78 % of held-out rows and a membership attack AUC of 0.51)."""
    if privacy["dcr_ratio_upper"] >= 1.0 and privacy["dcr_near_share"] <= privacy["dcr_near_share_limit"]:
        return False
    at_zero = privacy["dcr_synthetic_median"] == 0 and privacy["dcr_holdout_median"] == 0
    return not (at_zero and privacy["excess_copy_share"] <= 0)


def _privacy_flags(privacy: dict[str, Any], epsilon: float | None) -> tuple[list[Flag], float]:
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
    if dcr_warns(privacy):
        flags.append(Flag("privacy", "amber", f"synthetic rows lie closer to training rows than new patients do "
                                              f"(DCR ratio {privacy['dcr_ratio']:.2f}, at most "
                                              f"{privacy['dcr_ratio_upper']:.2f} within its sampling error; "
                                              f"{privacy['dcr_near_share']:.0%} of synthetic rows nearer a training "
                                              "row than 95 % of new patients)"))
    if epsilon is not None and epsilon > 10:
        flags.append(Flag("privacy", "amber", f"epsilon {epsilon:g} per site is a weak formal guarantee"))
    return flags, max(0.0, 1.0 - 2.0 * max(0.0, attack - 0.5))


def judge(fidelity: dict[str, Any], utility: dict[str, Any], privacy: dict[str, Any],
          majority_rate: float | None = None, epsilon: float | None = None, outcome: str | None = None,
          test_class_rows: list[int] | None = None) -> Verdict:
    """Flags per area and a headline score: the mean of the fidelity score, the utility share
    of the real rows' lift over chance (ROC-AUC) and one minus the attack's advantage, capped
    by the level (:data:`SCORE_CAP`) so that it never contradicts a flag. A model is judged
    only where its real rows' ROC-AUC stands out from chance on the held-out rows
    (``test_class_rows``: their rows per outcome class, :func:`chance_resolution`)."""
    resolution = chance_resolution(test_class_rows) if test_class_rows else 0.0
    utility_flags, utility_score = _utility_flags(utility, majority_rate, resolution,
                                                  sum(test_class_rows) if test_class_rows else None)
    privacy_flags, privacy_score = _privacy_flags(privacy, epsilon)
    flags = (_fidelity_flags(fidelity) + _effect_flags(fidelity.get("main_effects", []), outcome)
             + _relation_flags(fidelity.get("relations", []))
             + _made_up_flags(fidelity.get("relations_made_up", []))
             + _missingness_flags(fidelity.get("missingness", {}))
             + utility_flags + privacy_flags)
    components = {"fidelity": float(fidelity["overall_score"]), "privacy": privacy_score}
    if utility_score is not None:
        components["utility"] = utility_score
    level: Level = max((flag.level for flag in flags), key=LEVELS.index, default="green")
    score = min(sum(components.values()) / len(components), SCORE_CAP[level])
    return Verdict(round(float(score), 3), level, SUMMARY[level], flags,
                   {name: round(float(value), 3) for name, value in components.items()})
