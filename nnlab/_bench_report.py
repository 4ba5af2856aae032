"""The measuring, tables and reports of ``nnlab bench``: interleaved medians, ratios, the
geometric mean, the bytes kept between forward and backward, and a report's tables as
text or Markdown."""

import math
import statistics
import time

import torch

__all__ = [
    "MEMORY_TITLE",
    "TIME_TABLES",
    "format_table",
    "geometric_mean",
    "held_tensors",
    "layer_saved_bytes",
    "markdown_report",
    "nnlab_saved_bytes",
    "print_report",
    "profile_line",
    "state_storages",
    "storage_bytes",
    "time_cases",
    "torch_saved_bytes",
]


def _seconds(function):
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def time_cases(cases, repeats, warmup):
    """Median seconds per case for each side, the two timed alternately after a warm-up.
    Returns a list of (name, ours seconds, theirs seconds)."""
    for case in cases:
        for _ in range(warmup):
            case.ours()
            case.theirs()
    samples = {case.name: ([], []) for case in cases}
    for _ in range(repeats):
        for case in cases:
            samples[case.name][0].append(_seconds(case.ours))
            samples[case.name][1].append(_seconds(case.theirs))
    return [(name, statistics.median(ours), statistics.median(theirs)) for name, (ours, theirs) in samples.items()]


def geometric_mean(ratios):
    return math.exp(sum(math.log(r) for r in ratios) / len(ratios))


def format_table(results, sides=("nnlab", "torch"), unit=("ms", 1e3, 3), geomean=True):
    """The results as a text table with a ratio column and (``geomean``) the geometric
    mean; ``sides`` names the two columns, ``unit`` is (label, scale, decimals) of their
    values."""
    label, scale, decimals = unit
    width = max(len(name) for name, _, _ in results)
    columns = [f"{side + ' ' + label:>9}" for side in sides]
    lines = [f"{'case':<{width}}  {columns[0]}  {columns[1]}  {'ratio':>6}"]
    for name, ours, theirs in results:
        values = f"{ours * scale:{len(columns[0])}.{decimals}f}  {theirs * scale:{len(columns[1])}.{decimals}f}"
        lines.append(f"{name:<{width}}  {values}  {ours / theirs:6.2f}")
    if geomean:
        mean = geometric_mean([ours / theirs for _, ours, theirs in results])
        lines.append(f"{'geometric mean':<{width}}  {'':>{len(columns[0])}}  {'':>{len(columns[1])}}  {mean:6.2f}")
    return "\n".join(lines)


def profile_line(function, runs=3, top=3):
    """The ``top`` operations by self CPU time over ``runs`` calls of ``function``, with
    their shares of the total: "aten::bmm 51%, aten::addmm_ 20%, ..."."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities) as profiler:
        for _ in range(runs):
            function()
    events = sorted(profiler.key_averages(), key=lambda event: event.self_cpu_time_total, reverse=True)
    total = sum(event.self_cpu_time_total for event in events) or 1
    return ", ".join(f"{event.key} {100 * event.self_cpu_time_total / total:.0f}%" for event in events[:top])


# The time tables of a report: (title, part of the report, names of the two sides).
TIME_TABLES = (
    ("nnlab against torch, forward + backward (training steps: fit's step):", "cases", ("nnlab", "torch")),
    ("The courses' training steps, nnlab against torch.nn + torch.optim.Adam:", "course", ("nnlab", "torch")),
    ("The same layers as a graph Model and as a Sequential, forward + backward:", "graph", ("Model", "Sequential")),
    ("Parts of nnlab's Conv2d alone against torch's whole Conv2d, forward + backward:", "conv_parts", ("part", "torch")),
)
MEMORY_TITLE = "Bytes kept between forward and backward (layer caches against autograd's saved tensors):"


def print_report(report, print_fn=print):
    print_fn(f"torch {report['torch']}, threads: {report['threads']}, median of {report['repeats']} runs, {report['date']}")
    if "allocator" in report:
        print_fn(f"memory: {report['allocator']}, for both sides")
    for title, part, sides in TIME_TABLES:
        if not report.get(part):
            continue
        rows = [(entry["name"], entry["ours_ms"] / 1e3, entry["theirs_ms"] / 1e3) for entry in report[part]]
        print_fn(title)
        print_fn(format_table(rows, sides=sides, geomean=part != "conv_parts"))
        for entry in report[part]:
            if "ours_profile" in entry:
                print_fn(f"  {entry['name']}")
                print_fn(f"    {sides[0]}: {entry['ours_profile']}")
                print_fn(f"    {sides[1]}: {entry['theirs_profile']}")
        print_fn("")
    if report.get("train"):
        print_fn("Wall time of `nnlab train` against a plain PyTorch script (same data, model, settings):")
        rows = [(entry["name"], entry["ours_ms"] / 1e3, entry["theirs_ms"] / 1e3) for entry in report["train"]]
        print_fn(format_table(rows, sides=("nnlab", "script"), unit=("s", 1, 2)))
    if "memory" not in report:
        return
    print_fn(MEMORY_TITLE)
    rows = [(entry["model"], entry["nnlab_bytes"], entry["torch_bytes"]) for entry in report["memory"]]
    print_fn(format_table(rows, unit=("MB", 1e-6, 2)))


def markdown_report(report):
    """The report (what --json prints) as Markdown: the date, torch version, threads and
    repeats it was measured with, then each table with its ratio column and geometric
    mean; the profiles are left out."""
    lines = [
        f"Measured on {report['date']}: torch {report['torch']}, {report['threads']} threads, median of "
        f"{report['repeats']} runs. The ratio is the first side's time (or bytes) over the second's.",
    ]
    if "allocator" in report:
        lines[0] += f" Memory: {report['allocator']}, for both sides."
    for title, part, sides in TIME_TABLES:
        rows = [(entry["name"], entry["ours_ms"], entry["theirs_ms"], entry["ratio"]) for entry in report.get(part) or []]
        lines += _markdown_table(title, ("case", f"{sides[0]} ms", f"{sides[1]} ms"), rows, report.get(f"{part}_geometric_mean"))
    rows = [(entry["model"], entry["nnlab_bytes"] / 1e6, entry["torch_bytes"] / 1e6, entry["ratio"]) for entry in report["memory"]]
    lines += _markdown_table(MEMORY_TITLE, ("model", "nnlab MB", "torch MB"), rows, report.get("memory_geometric_mean"))
    return "\n".join(lines) + "\n"


def _markdown_table(title, header, rows, geometric_mean=None):
    if not rows:
        return []
    lines = ["", title, "", f"| {' | '.join(header)} | ratio |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {ours:.3f} | {theirs:.3f} | {ratio:.2f} |" for name, ours, theirs, ratio in rows]
    if geometric_mean is not None:
        lines.append(f"| geometric mean | | | {geometric_mean:.2f} |")
    return lines


# Memory -------------------------------------------------------------------------------------


def _storage_key(tensor):
    return tensor.untyped_storage().data_ptr()


def state_storages(tensors):
    return {_storage_key(tensor) for tensor in tensors}


def storage_bytes(tensors, excluded):
    """Bytes of the storages behind ``tensors``, each counted once, without ``excluded``."""
    sizes = {_storage_key(tensor): tensor.untyped_storage().nbytes() for tensor in tensors}
    return sum(size for key, size in sizes.items() if key not in excluded)


def held_tensors(layer):
    """Every tensor in an attribute of ``layer`` or its sub-layers (alone, or nested in
    tuples, lists and dicts), i.e. what the layers hold between forward and backward, with
    their state."""
    found = []
    for value in vars(layer).values():
        found.extend(nested_tensors(value))
    for _, child in layer.named_children():
        found.extend(held_tensors(child))
    return found


def nested_tensors(value):
    """The tensors in ``value``: itself, or those nested in its tuples, lists and dicts."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        return [tensor for item in value for tensor in nested_tensors(item)]
    return []


def nnlab_saved_bytes(model, loss_fn, x, y):
    """Bytes nnlab's layers (model and loss) keep after a forward pass for backward."""
    loss_fn(model(x), y)
    state = [param for param, _ in model.params()] + [grad for _, grad in model.params()] + model.buffers()
    return storage_bytes(held_tensors(model) + held_tensors(loss_fn), state_storages(state))


def torch_saved_bytes(module, loss_fn, x, y):
    """Bytes autograd saves for backward during the module's forward pass and loss."""
    saved = []

    def pack(tensor):
        saved.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss_fn(module(x), y)
    state = list(module.parameters()) + list(module.buffers())
    return storage_bytes(saved, state_storages(state))


def layer_saved_bytes(layer, module, x):
    """(nnlab bytes, torch bytes) kept between forward and backward by one layer and its
    twin, the input gradient wanted on both sides (a floating-point input's)."""
    layer(x)
    state = [param for param, _ in layer.params()] + [grad for _, grad in layer.params()] + layer.buffers()
    ours = storage_bytes(held_tensors(layer), state_storages(state))
    x_ref = x.clone().requires_grad_(True) if x.is_floating_point() else x
    theirs = torch_saved_bytes(module, lambda out, y: out.sum(), x_ref, None)
    return ours, theirs
