"""What the what-if panel and its forks say: the recombination's table, the branches, and a fork's path and ending
in the page's words."""

from __future__ import annotations

from pipeline.whatif import path_name

from .controls import label_of
from .render import mode_label, shown_value


def whatif_summary(alt, seeds: tuple[int, ...], recorded_scale: float, recorded_mode: str) -> str:
    """What the what-if changes at its step, per seed: the guidance update's size ‖ε̂ − ε_c‖ at the run's settings
    and at the what-if's, and how far the clean-image estimate x̂₀ moved."""
    rows = ["| seed | ‖ε̂ − ε_c‖ run | ‖ε̂ − ε_c‖ what-if | ‖Δx̂₀‖ |", "|---|---|---|---|"]
    for k, seed in enumerate(seeds):
        old = "–" if alt.recorded_update_norm is None else f"{float(alt.recorded_update_norm[k]):.3f}"
        new = "–" if alt.update_norm is None else f"{float(alt.update_norm[k]):.3f}"
        rows.append(f"| {seed} | {old} | {new} | {float(alt.difference_norm[k]):.3f} |")
    head = (f"**Step {alt.step}: {mode_label(alt.mode)}, scale {alt.scale:g}** (the run used {mode_label(recorded_mode)}, "
            f"{recorded_scale:g}). No UNet call: the step's cached predictions, recombined. Each Δ image is mid-grey "
            "where nothing changed, amplified by the factor its caption gives.")
    return "\n".join([head, "", *rows])


def whatif_hint(kept: int, total: int, stride: int) -> str:
    every = "every step" if stride == 1 else f"every {stride}th step ({kept} of {total}: the memory budget)"
    return (f"This run's predictions are kept for {every}. Move **What-if scale** or **What-if mode** to see the "
            "step shown by **Revisit step** re-guided; **Continue from this step** runs only the steps after it.")


def forking(name: str, step: int, total: int) -> str:
    return f"**Continuing from step {step}/{total}:** {name}. Steps 1 to {step} are not recomputed."


def showing_branch(name: str) -> str:
    return f"**Showing branch:** {name}. The step slider, what-if and forks now follow it."


def fork_path(request) -> str:
    """A fork's path in the page's words: the controls' labels and the choices' labels, never field names or ids
    ("Guidance mode Standard CFG → Reversed guidance from step 5")."""
    return path_name(request, label_of, shown_value)


def images_label(branch: str) -> str:
    """The gallery's label: which branch its images show."""
    return "Images: the run" if branch == "the run" else f"Images: fork {branch}"


def fork_ending(branch: str, step: int, same: list[int], different: list[int], toy: bool) -> str:
    """After a fork: which seeds' final images are pixel for pixel the parent's, and why that happens."""
    if not same:
        return f"**Fork {branch}:** every seed's final image differs from its parent's."
    seeds = ", ".join(map(str, same))
    which = "every seed" if not different else f"seed{'s' if len(same) > 1 else ''} {seeds}"
    head = (f"**The fork ends where its parent ended** for {which}: the final image{'s are' if len(same) > 1 else ' is'} "
            f"pixel for pixel the parent's")
    if different:
        head += f" (seed{'s' if len(different) > 1 else ''} {', '.join(map(str, different))} differ{'s' if len(different) == 1 else ''})"
    why = (f" By step {step} those samples had already settled on their picture: the what-if's Δ shows that the new "
           "guidance changes that step's estimate x̂₀, but the steps after it still lead to the same image.")
    if toy:
        why += (" In the toy world this comes early: its denoiser is exact, so once a sample lies clearly nearer one "
                "of its 96 data items than any other, the remaining steps end on that item with or without guidance. "
                "Fork from step 1 to see guidance change where a sample ends.")
    return head + "." + why


def fork_path_note(request) -> str:
    """A restored fork's PNG: what its path changed, and that Generate replays it."""
    return (f"**This PNG is a fork:** {fork_path(request)}. Generate replays its whole path (the controls hold the "
            "settings before the first fork); forget the path to run the controls alone.")


def nothing_to_continue() -> str:
    return "**Nothing to continue:** Generate a run first; then pick a step with Revisit step and continue from it."
