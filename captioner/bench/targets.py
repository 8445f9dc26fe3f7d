"""The benchmark's targets: which are met, and for a missed one what the measurements say about why."""

from __future__ import annotations

from typing import Any

# Targets of the benchmark (issue 6, issue 11 for the keyframe figures, issue 21 for the web-style
# set and the bytes a 2-hour take costs); the JSON says which are met. The keyframe targets and the
# 2.5x hold for the headline (camera-style) set.
TARGETS = {
    "pipeline_efficiency": 0.9,
    "speedup_vs_naive": 5.0,
    "prefix_cache_hit_ratio": 0.95,
    "rss_growth_max": 1.10,
    "keyframe_decode_speedup": 3.0,
    "frame_shift_max": 0.25,
    "speedup_vs_naive_camera": 2.5,
    "keyframe_decode_speedup_web": 1.5,
    "bytes_read_share_2h": 0.01,
}
TARGET_NOTES = {
    "speedup_vs_naive": "issue 6: end to end against the naive loop",
    "speedup_vs_naive_camera": "issue 11: end to end against the naive loop (exact frames) on camera-style "
    "clips, on the 2-core development machine",
    "keyframe_decode_speedup": "issue 11: CPU per clip, exact frames / the default tolerance, camera-style clips",
    "frame_shift_max": "issue 11: the worst distance of a frame from its target, as a share of a segment",
    "keyframe_decode_speedup_web": "issue 21: the same speedup on web-style clips (a keyframe per 250 frames)",
    "bytes_read_share_2h": "issue 21: bytes the frame stage reads of a 2-hour take (every window at the default "
    "windows), as a share of its size, each style",
}


def check_targets(result: dict[str, Any]) -> dict[str, Any]:
    """Which targets are met, and for a missed one, what the measurements say about why.

    A run of the frame stage alone (`--frame-stage-only`) checks the frame-stage targets only.
    """
    checks, why = _frame_checks(result)
    if "pipeline_efficiency" not in result:
        return {"thresholds": TARGETS, "notes": TARGET_NOTES, "met": checks, "why_missed": why}
    speedup = result["speedup_vs_naive"] or 0
    checks.update({
        "pipeline_efficiency": result["pipeline_efficiency"] >= TARGETS["pipeline_efficiency"],
        "speedup_vs_naive": speedup >= TARGETS["speedup_vs_naive"],
        "prefix_cache_hit_ratio": (result["prefix_cache_hit_ratio"] or 0) >= TARGETS["prefix_cache_hit_ratio"],
        "rss_growth": result["rss_growth"] <= TARGETS["rss_growth_max"],
        "speedup_vs_naive_camera": speedup >= TARGETS["speedup_vs_naive_camera"],
    })
    if not checks["pipeline_efficiency"]:
        why["pipeline_efficiency"] = (
            f"end to end reaches {result['pipeline_efficiency']:.0%} of the slower stage "
            f"({result['bottleneck']}): the other stage is not hidden behind it"
        )
    for key in ("speedup_vs_naive", "speedup_vs_naive_camera"):
        if not checks[key]:
            why[key] = _why_slow_vs_naive(result)
    if not checks["prefix_cache_hit_ratio"]:
        why["prefix_cache_hit_ratio"] = "clips did not reuse the cached system-prompt blocks"
    if not checks["rss_growth"]:
        why["rss_growth"] = "resident memory grew over the long run"
    return {"thresholds": TARGETS, "notes": TARGET_NOTES, "met": checks, "why_missed": why}


def _frame_checks(result: dict[str, Any]) -> tuple[dict[str, bool], dict[str, str]]:
    """The frame-stage targets (headline set, web-style set, 2-hour takes) and why any is missed."""
    checks = {
        "keyframe_decode_speedup": result["keyframe_decode_speedup"] >= TARGETS["keyframe_decode_speedup"],
        "frame_shift_max": result["frame_shift_max"] <= TARGETS["frame_shift_max"],
    }
    why = {}
    if not checks["keyframe_decode_speedup"]:
        why["keyframe_decode_speedup"] = _why_keyframes_slow(result)
    if not checks["frame_shift_max"]:
        why["frame_shift_max"] = _why_shifted(result)
    web = result["sets"].get("web")
    if web is not None:
        checks["keyframe_decode_speedup_web"] = web["keyframe_decode_speedup"] >= TARGETS["keyframe_decode_speedup_web"]
        if not checks["keyframe_decode_speedup_web"]:
            why["keyframe_decode_speedup_web"] = _why_keyframes_slow(result, "web")
    takes = {style: lengths["2h"] for style, lengths in (result.get("per_hour") or {}).get("styles", {}).items()
             if "2h" in lengths}
    if takes:
        shares = {style: take["bytes_read_share"] for style, take in takes.items()}
        checks["bytes_read_share_2h"] = all(s is not None and s <= TARGETS["bytes_read_share_2h"]
                                            for s in shares.values())
        if not checks["bytes_read_share_2h"]:
            why["bytes_read_share_2h"] = _why_bytes(takes)
    return checks, why


def _why_bytes(takes: dict[str, dict[str, Any]]) -> str:
    """What the 2-hour takes' reads were, per style."""
    parts = []
    for style, take in takes.items():
        if take["bytes_read"] is None:
            parts.append(f"{style}: bytes read not measured (no /proc/self/io)")
            continue
        windows = take["windows"] or 1
        parts.append(f"{style}: {take['bytes_read'] / 2**20:,.0f} MiB of {take['file_bytes'] / 2**20:,.0f} MiB "
                     f"({take['bytes_read_share']:.2%}), {take['bytes_read'] / windows / 2**20:.2f} MiB a window "
                     f"for {take['windows_measured']} measured of {windows} windows")
    return "; ".join(parts) + ": every window decodes its frames' packets (keyframes and what lies between)"


def _why_slow_vs_naive(result: dict[str, Any]) -> str:
    """The stage that limits end to end, and the speedup that stage allows on this host."""
    engine_vs_generate = f"the engine alone is {result['engine_speedup_vs_naive_generate']}x faster than HF generate"
    if result["bottleneck"] != "decode":
        return f"engine-bound: {engine_vs_generate}; raise max_num_seqs/batch_size if memory allows"
    cpus = result["host"]["cpus"] or 1
    cpu_per_clip = result["decode_cpu_s_per_clip"]["default"]
    naive = result["detail"]["naive"]
    # Every core decoding and nothing else: the most clips a second this host can decode.
    ceiling = cpus / cpu_per_clip / result["naive_videos_per_s"] if result["naive_videos_per_s"] else 0.0
    return (
        f"decode-bound: a clip costs {cpu_per_clip:.2f} CPU s to decode, so the frame stage needs "
        f"{result['decode_cores_per_engine']} cores to keep the engine busy and this host has {cpus} (shared with "
        f"the engine): even with every core decoding, end to end cannot exceed {ceiling:.2f}x the naive loop, "
        f"which spends {naive['decode_s'] / naive['seconds']:.0%} of its time decoding; {engine_vs_generate}"
    )


def _why_keyframes_slow(result: dict[str, Any], name: str | None = None) -> str:
    """How many clips of set `name` (the headline set) keyframes served wholly, and why the others
    needed frames between keyframes."""
    clips = result["sets"][name or result["headline_set"]]["per_clip"]
    served = [c for c in clips if c["decoder"]["default"] == "pyav-keyframes"]
    others = [c for c in clips if c not in served]
    cpu = lambda group, way: sum(c["cpu_s"][way] for c in group)  # noqa: E731
    text = f"{len(served)} of {len(clips)} clips were served by keyframes alone"
    if served:
        text += f" ({cpu(served, 'exact') / cpu(served, 'default'):.1f}x less CPU than exact frames on those"
        if aligned := sum(c["decoder"]["exact"] == "pyav-keyframes" for c in served):
            text += f"; on {aligned} of them the exact frames are keyframes too"
        text += ")"
    if others:
        share = cpu(others, "default") / cpu(clips, "default")
        frames, tolerance = result["settings"]["frames"], result["settings"]["keyframe_tolerance"]
        # A target finds a keyframe within tolerance x segment; keyframes lie interval apart.
        reach = [f"{c['file']}: +/-{tolerance * c['seconds'] / frames:.2f} s of each target, "
                 + (f"keyframes {c['keyframe_interval_s']} s apart" if c["keyframe_interval_s"] else "one keyframe")
                 for c in others[:3]]
        text += (f"; the other {len(others)} need frames between keyframes and take {share:.0%} of the CPU ("
                 + "; ".join(reach) + ")")
    return text


def _why_shifted(result: dict[str, Any]) -> str:
    clips = result["sets"][result["headline_set"]]["per_clip"]
    worst = max(clips, key=lambda c: c["shift_max"])
    tolerance = result["settings"]["keyframe_tolerance"]
    if tolerance > TARGETS["frame_shift_max"]:
        return f"keyframe_tolerance is {tolerance}: keyframes that far from their targets are allowed"
    return (f"{worst['file']}: a frame {worst['shift_max']} of a segment from its target: the clip has too few "
            f"frames for {result['settings']['frames']} distinct ones near their targets")
