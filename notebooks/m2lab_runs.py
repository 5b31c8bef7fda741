"""m2lab_runs.py — read m2lab HDF5 run files and sweep index files into pandas.

    from m2lab_runs import load_run, load_sweep
    run = load_run("runs/s3-m2rnn.h5")
    run.status, run.attrs, run.config        # root attributes; config = json of config_json
    run.metrics                               # DataFrame, long format: name, step, value, time
    run.metric("loss")                        # Series of values indexed by step
    run.evals, run.eval("acc")                # the same for /eval
    run.array("moe_load_01")                  # /arrays/<name>: DataFrame, index step, one column per entry
    run.checkpoints                           # complete checkpoint steps, ascending
    run.checkpoint()                          # {tensor path: numpy array} of the latest one
    sweep = load_sweep("runs/sweep.h5")       # one row per member: hyper-parameters, final metrics

The file layout is described in core/runfile/runfile.h. Files are opened in SWMR read mode, so a run
can be read while m2lab writes it. The writer briefly leaves SWMR mode to create a new series
or write a checkpoint; an open during that moment fails and is retried (`timeout` seconds).
To follow a live run, call load_run (or Run.reload) again: it reads everything and closes the
file. A reader that keeps an h5py.File open sees appended values through Dataset.refresh()
only for a while (HDF5 1.10's SWMR assumes a writer that never leaves SWMR mode: after some
of m2lab's switches the open view goes stale) and never sees new series or checkpoints.

Command line: `python m2lab_runs.py RUN.h5 [...]` prints a summary of each run;
`python m2lab_runs.py --selftest` checks this module on synthetic files.
"""

import fcntl
import json
import os
import struct
import time

import h5py
import numpy as np
import pandas as pd

__all__ = ["load_run", "load_sweep", "open_run_file", "Run"]

# Root attributes that m2lab itself writes; every other root attribute is a config key.
STANDARD_ATTRS = {
    "format_version", "m2lab_version", "git_rev", "start_time", "start_unix", "host", "device",
    "script", "config_json", "status", "resume_count", "last_resume",
    "script_path", "script_sha256", "overrides_json", "num_params",
}
_LOCK_BYTE = 1 << 62  # the byte an m2lab writer holds an OFD lock on (core/runfile/runfile_h5.c)


def _writer_alive(path):
    """True when an m2lab writer holds the file's writer lock (Linux OFD locks)."""
    op = getattr(fcntl, "F_OFD_GETLK", None)
    if op is None:
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        # struct flock on Linux x86-64 / aarch64: short l_type, short l_whence, off_t l_start,
        # off_t l_len, pid_t l_pid (+ padding)
        req = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, _LOCK_BYTE, 1, 0)
        res = fcntl.fcntl(fd, op, req)
        return struct.unpack("hhqqi4x", res)[0] != fcntl.F_UNLCK
    except OSError:
        return False
    finally:
        os.close(fd)


def open_run_file(path, timeout=10.0):
    """Open an HDF5 file for reading, in SWMR mode when possible, retrying while a writer is
    in its exclusive (non-SWMR) state. Returns an h5py.File; close it (or use `with`)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    deadline = time.monotonic() + timeout
    while True:
        try:
            return _h5file(path, swmr=True)
        except OSError as e:
            msg = str(e)
            flagged = "open for SWMR writing" in msg or "already open for write" in msg
            if "signature" in msg:
                raise OSError(f"{path}: not an HDF5 file") from e
            if not flagged:
                try:  # e.g. an older-format file that SWMR reading refuses
                    return _h5file(path, swmr=False)
                except OSError:
                    raise e
            if not _writer_alive(path):
                raise OSError(
                    f"{path}: marked open for writing but no m2lab writer holds it (a crashed run): "
                    f"resume it, run `m2lab inspect {path}` (which clears the mark) or `h5clear -s {path}`"
                ) from e
            if time.monotonic() > deadline:
                raise OSError(f"{path}: a writer kept the file in exclusive mode for more than {timeout} s") from e
            time.sleep(0.05)


def _h5file(path, swmr):
    kw = dict(libver="latest") if swmr else {}
    try:
        return h5py.File(path, "r", swmr=swmr, locking=False, **kw)
    except TypeError:  # h5py < 3.5 has no `locking`
        return h5py.File(path, "r", swmr=swmr, **kw)


def _py(v):
    """An attribute value as a plain Python value (str, int, float, bool, list)."""
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, np.ndarray):
        if v.shape == () or v.size == 1:
            return _py(v.reshape(-1)[0]) if v.size == 1 else _py(v[()])
        return [_py(x) for x in v.tolist()]
    if isinstance(v, np.bool_):
        return bool(v)
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return float(v)
    return v


def _read_series_group(parent, with_time=True):
    """{name: DataFrame(step, value[, time])} of every series group under `parent`."""
    out = {}
    if parent is None:
        return out
    for name in parent:
        g = parent[name]
        if not isinstance(g, h5py.Group) or "step" not in g or "value" not in g:
            continue
        step_ds, value_ds = g["step"], g["value"]
        # m2lab extends value (and time) before step: len(step) entries of each are written
        n = min(step_ds.shape[0], value_ds.shape[0])
        cols = {"step": step_ds[:n].astype(np.int64), "value": value_ds[:n].astype(np.float64)}
        if with_time and "time" in g and g["time"].shape[0] >= n:
            cols["time"] = g["time"][:n].astype(np.float64)
        df = pd.DataFrame(cols)
        df.attrs["goal"] = _py(g.attrs["goal"]) if "goal" in g.attrs else None
        out[name] = df
    return out


def _read_array_group(parent):
    """{name: (steps (n,) int64, values (n, width) float64)} of every array series under `parent` (/arrays)."""
    out = {}
    if parent is None:
        return out
    for name in parent:
        g = parent[name]
        if not isinstance(g, h5py.Group) or "step" not in g or "value" not in g or g["value"].ndim != 2:
            continue
        # value (and time) are extended before step: len(step) rows of value are written
        n = min(g["step"].shape[0], g["value"].shape[0])
        out[name] = (g["step"][:n].astype(np.int64), g["value"][:n].astype(np.float64))
    return out


def _long(series):
    frames = [df.assign(name=name) for name, df in sorted(series.items())]
    if not frames:
        return pd.DataFrame({"name": pd.Series(dtype=str), "step": pd.Series(dtype=np.int64),
                             "value": pd.Series(dtype=np.float64)})
    df = pd.concat(frames, ignore_index=True)
    return df[["name"] + [c for c in df.columns if c != "name"]]


def _complete_checkpoints(f):
    steps = []
    g = f.get("checkpoints")
    if g is None:
        return steps
    for name in g:
        if not name.isdigit() or (len(name) > 1 and name[0] == "0"):
            continue  # .tmp-<step>: being written or left by a killed writer
        try:
            if _py(g[name].attrs.get("complete", 0)) == 1:
                steps.append(int(name))
        except (KeyError, OSError):
            continue
    return sorted(steps)


class Run:
    """One run file, read at the moment of load_run (call reload() for newer data)."""

    def __init__(self, path, timeout=10.0):
        self.path = os.fspath(path)
        self.timeout = timeout
        self.reload()

    def reload(self):
        with open_run_file(self.path, self.timeout) as f:
            if "format_version" not in f.attrs:
                raise ValueError(f"{self.path}: not an m2lab run file (no format_version attribute)")
            self.attrs = {k: _py(v) for k, v in f.attrs.items()}
            self._metrics = _read_series_group(f.get("metrics"))
            self._evals = _read_series_group(f.get("eval"))
            self._arrays = _read_array_group(f.get("arrays"))
            self.checkpoints = _complete_checkpoints(f)
        try:
            self.config = json.loads(self.attrs.get("config_json") or "{}")
        except ValueError:
            self.config = {}
        self.config_attrs = {k: v for k, v in self.attrs.items() if k not in STANDARD_ATTRS}
        self.status = self.attrs.get("status")
        self.metrics = _long(self._metrics)
        self.evals = _long(self._evals)
        return self

    @property
    def metric_names(self):
        return sorted(self._metrics)

    @property
    def eval_names(self):
        return sorted(self._evals)

    @property
    def array_names(self):
        return sorted(self._arrays)

    def array(self, name):
        """/arrays/<name> (one row of values per logged step) as a DataFrame: index step, columns 0 .. width-1."""
        if name not in self._arrays:
            have = ", ".join(sorted(self._arrays)) or "none"
            raise KeyError(f"{self.path}: no array series /arrays/{name} (have: {have})")
        steps, values = self._arrays[name]
        return pd.DataFrame(values, index=pd.Index(steps, name="step"))

    def _series(self, table, name, group):
        if name not in table:
            raise KeyError(f"{self.path}: no series /{group}/{name} (have: {', '.join(sorted(table)) or 'none'})")
        df = table[name]
        return pd.Series(df["value"].to_numpy(), index=pd.Index(df["step"].to_numpy(), name="step"), name=name)

    def metric(self, name):
        """Values of /metrics/<name> as a Series indexed by step."""
        return self._series(self._metrics, name, "metrics")

    def eval(self, name):
        """Values of /eval/<name> as a Series indexed by step."""
        return self._series(self._evals, name, "eval")

    def final(self):
        """{"metrics/<name>" or "eval/<name>": last value}."""
        out = {}
        for group, table in (("metrics", self._metrics), ("eval", self._evals)):
            for name, df in sorted(table.items()):
                if len(df):
                    out[f"{group}/{name}"] = float(df["value"].iloc[-1])
        return out

    def checkpoint(self, step=None, prefix=""):
        """{tensor path: numpy array} of a complete checkpoint (the latest by default),
        optionally only the paths starting with `prefix`. bf16 tensors come back as float32."""
        with open_run_file(self.path, self.timeout) as f:
            steps = _complete_checkpoints(f)
            if not steps:
                raise KeyError(f"{self.path}: no complete checkpoint")
            step = steps[-1] if step is None else int(step)
            if step not in steps:
                raise KeyError(f"{self.path}: no complete checkpoint at step {step} (have: {steps})")
            g = f["checkpoints"][str(step)]
            out = {}

            def visit(name, obj):
                if isinstance(obj, h5py.Dataset) and name.startswith(prefix):
                    out[name] = obj[()]

            g.visititems(visit)
            return out

    def __repr__(self):
        return (f"<Run {self.path}: status={self.status!r}, {len(self._metrics)} metrics, "
                f"{len(self._evals)} evals, {len(self._arrays)} arrays, checkpoints={self.checkpoints}>")


def load_run(path, timeout=10.0):
    """Read a run file (see Run)."""
    return Run(path, timeout)


def _str_list(v):
    v = _py(v)
    if v is None:
        return None
    if isinstance(v, str):
        try:
            v = json.loads(v)
        except ValueError:
            v = [k for k in v.replace(",", " ").split() if k]
    return [str(x) for x in v] if isinstance(v, (list, tuple)) else [str(v)]


def _member_status(f, name):
    st = f.get("members_status")
    if isinstance(st, h5py.Group):
        if name in st.attrs:
            return _py(st.attrs[name])
        if name in st and isinstance(st[name], h5py.Dataset):
            return _py(st[name][()])
    elif "members_status" in f.attrs:
        v = _py(f.attrs["members_status"])
        if isinstance(v, str):
            try:
                v = json.loads(v)
            except ValueError:
                v = None
        if isinstance(v, dict):
            return v.get(name)
    return None


_INFO_FIELDS = ("file", "status", "exit_code", "path")


def _sweep_entries(f):
    """[(name, hyper-parameters, run file or None, status, exit_code)] in sweep order."""
    members, info = f.get("members"), f.get("info")
    order = _str_list(f.attrs.get("members"))
    if order is None:
        names = set(members) if isinstance(members, h5py.Group) else set()
        names |= set(info) if isinstance(info, h5py.Group) else set()
        order = sorted(names)
    entries = []
    for name in order:
        hp, target, status, exit_code = {}, None, None, None
        if isinstance(info, h5py.Group) and name in info:
            a = info[name].attrs
            hp = {k: _py(v) for k, v in a.items() if k not in _INFO_FIELDS}
            target = _py(a["file"]) if "file" in a else None
            status = _py(a["status"]) if "status" in a else None
            exit_code = _py(a["exit_code"]) if "exit_code" in a else None
        link = members.get(name, getlink=True) if isinstance(members, h5py.Group) and name in members else None
        if isinstance(link, h5py.ExternalLink):
            target = target or link.filename
        elif isinstance(link, h5py.HardLink):
            g = members[name]  # a group holding the hyper-parameters and a link "run" / attribute "path"
            if isinstance(g, h5py.Group):
                hp.update({k: _py(v) for k, v in g.attrs.items() if k not in _INFO_FIELDS})
                inner = g.get("run", getlink=True)
                if isinstance(inner, h5py.ExternalLink):
                    target = target or inner.filename
                elif "path" in g.attrs:
                    target = target or _py(g.attrs["path"])
        if status is None:
            status = _member_status(f, name)
        entries.append((name, hp, target, status, exit_code))
    return entries


def load_sweep(index_path, timeout=10.0):
    """A sweep index file -> DataFrame with one row per member, in sweep order: name, path,
    status, exit_code, the hyper-parameters, `step` (the last step logged) and the last value
    of every metric ("metrics/<name>") and eval series ("eval/<name>").

    Layout (core/runfile/runfile_sweep.h): /members/<name> is an HDF5 external link to the member's run
    file; /info/<name> is a group whose attributes are the hyper-parameters plus file, status
    and exit_code; root attributes `keys` (hyper-parameter names, in column order) and `members`
    (member order). Also accepted: /members/<name> as a group of hyper-parameter attributes with
    an external link `run`, and /members_status (attributes or datasets named like the members).
    Without hyper-parameter attributes, the member run's config attributes are used. Relative
    file names are taken from the index file's folder. Member files are opened here in SWMR mode
    (never through the link), so members being written can be read; one that cannot be read
    gets status "missing" / "unreadable: ..." unless the index says otherwise."""
    index_path = os.fspath(index_path)
    base = os.path.dirname(os.path.abspath(index_path))
    with open_run_file(index_path, timeout) as f:
        keys = _str_list(f.attrs.get("keys"))
        if keys is None:
            keys = _str_list(f.attrs.get("sweep_keys"))
        entries = _sweep_entries(f)
    rows = []
    for name, hp, target, status, exit_code in entries:
        row = {"name": name, "path": None, "status": status}
        if exit_code is not None:
            row["exit_code"] = exit_code
        run = None
        if target is None:
            row["status"] = status or "no run file linked"
        else:
            path = target if os.path.isabs(target) else os.path.join(base, target)
            row["path"] = path
            try:
                run = load_run(path, timeout)
            except (OSError, ValueError) as e:
                if status is None or status == "running":
                    row["status"] = "missing" if not os.path.exists(path) else f"unreadable: {e}"
        params = dict(hp) if hp else (dict(run.config_attrs) if run is not None else {})
        if keys is not None:
            params = {k: params.get(k) for k in keys}
        row.update(params)
        if run is not None:
            if status is None:
                row["status"] = run.status
            series = list(run._metrics.values()) + list(run._evals.values())
            steps = [int(df["step"].iloc[-1]) for df in series if len(df)]
            row["step"] = max(steps) if steps else None
            row.update(run.final())
        rows.append(row)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- command line and self-test

def _summary(path):
    run = load_run(path)
    print(run)
    print("  config:", {k: v for k, v in run.config_attrs.items()})
    for group, names, get in (("metrics", run.metric_names, run.metric), ("eval", run.eval_names, run.eval)):
        for name in names:
            s = get(name)
            last = f"{s.iloc[-1]:.6g} @ {s.index[-1]}" if len(s) else "-"
            print(f"  {group}/{name}: {len(s)} values, last {last}")


def _selftest():
    import tempfile

    tmp = tempfile.mkdtemp(prefix="m2lab-runs-")
    bf16 = h5py.h5t.IEEE_F32LE.copy()  # the bf16 type m2lab writes
    bf16.set_fields(15, 7, 8, 0, 7)
    bf16.set_size(2)
    bf16.set_ebias(127)

    def write_run(path, lr, final_loss, status="done", complete=True):
        with h5py.File(path, "w", libver="latest") as f:
            f.attrs["format_version"] = 1
            f.attrs["status"] = status
            f.attrs["config_json"] = json.dumps({"lr": lr, "model": "m2rnn"})
            f.attrs["lr"] = lr
            f.attrs["model"] = "m2rnn"
            f.attrs["use_bias"] = np.bool_(True)
            for group, name, steps, values in (("metrics", "loss", [0, 1, 2], [3.0, 2.0, final_loss]),
                                               ("eval", "acc", [0, 2], [0.5, 0.75])):
                g = f.create_group(f"{group}/{name}")
                g.create_dataset("value", data=np.array(values + [9.9]), maxshape=(None,), chunks=(1024,))
                g.create_dataset("step", data=np.array(steps, dtype=np.int64), maxshape=(None,), chunks=(1024,))
            g = f.create_group("arrays/load")  # an array series: value (steps, width), one row past len(step)
            g.create_dataset("value", data=np.arange(12.0).reshape(4, 3), maxshape=(None, 3), chunks=(64, 3))
            g.create_dataset("step", data=np.array([0, 1, 2], dtype=np.int64), maxshape=(None,), chunks=(1024,))
            ck = f.create_group("checkpoints/2")
            ck.attrs["complete"] = 1 if complete else 0
            ck.create_dataset("params/w", data=np.arange(6, dtype=np.float32).reshape(2, 3))
            raw = (np.array([1.5, -2.0], dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)
            sid = h5py.h5s.create_simple((2,))
            dsid = h5py.h5d.create(ck.create_group("opt").id, b"m", bf16, sid)
            dsid.write(h5py.h5s.ALL, h5py.h5s.ALL, raw, mtype=bf16)
            f.create_group("checkpoints/.tmp-3")

    a, b = os.path.join(tmp, "a.h5"), os.path.join(tmp, "b.h5")
    write_run(a, 0.001, 1.0)
    write_run(b, 0.003, 0.5, status="running")
    run = load_run(a)
    assert run.status == "done" and run.config["lr"] == 0.001 and run.attrs["use_bias"] is True
    assert run.metric("loss").tolist() == [3.0, 2.0, 1.0], "value beyond len(step) is ignored"
    assert run.metric("loss").index.tolist() == [0, 1, 2]
    assert list(run.metrics.columns) == ["name", "step", "value"] and len(run.evals) == 2
    assert run.array_names == ["load"] and run.array("load").shape == (3, 3), "rows beyond len(step) are ignored"
    assert run.array("load").index.tolist() == [0, 1, 2] and run.array("load").iloc[2].tolist() == [6.0, 7.0, 8.0]
    assert run.checkpoints == [2], "only complete, decimal checkpoints"
    ck = run.checkpoint()
    assert ck["params/w"].shape == (2, 3) and ck["opt/m"].dtype == np.float32 and ck["opt/m"].tolist() == [1.5, -2.0]
    try:
        run.metric("nope")
        raise AssertionError("missing series")
    except KeyError as e:
        assert "no series /metrics/nope" in str(e)

    with h5py.File(os.path.join(tmp, "sweep.h5"), "w") as f:
        f.attrs["sweep_keys"] = json.dumps(["lr"])
        m = f.create_group("members")
        m["a"] = h5py.ExternalLink("a.h5", "/")
        g = m.create_group("b")
        g.attrs["lr"] = 0.003
        g["run"] = h5py.ExternalLink("b.h5", "/")
        m["c"] = h5py.ExternalLink("c.h5", "/")  # not started yet
        st = f.create_group("members_status")
        st.attrs["a"] = "done"
        st.attrs["c"] = "queued"
    with h5py.File(os.path.join(tmp, "index.h5"), "w") as f:  # the layout of core/runfile/runfile_sweep.h
        f.attrs["sweep_format_version"] = 1
        f.attrs["keys"] = np.array(["lr", "layers"], dtype=h5py.string_dtype())
        f.attrs["members"] = np.array(["b", "a", "c"], dtype=h5py.string_dtype())
        for name, lr, st in (("a", 0.001, "done"), ("b", 0.003, "running"), ("c", 0.01, "pending")):
            f["members/" + name] = h5py.ExternalLink(name + ".h5", "/")
            g = f.create_group("info/" + name)
            g.attrs["lr"] = lr
            g.attrs["layers"] = "MMAM"
            g.attrs["file"] = name + ".h5"
            g.attrs["status"] = st
            g.attrs["exit_code"] = 0 if st == "done" else -1
    ix = load_sweep(os.path.join(tmp, "index.h5"))
    assert ix["name"].tolist() == ["b", "a", "c"], "sweep order"
    ix = ix.set_index("name")
    assert ix.loc["a", "lr"] == 0.001 and ix.loc["b", "layers"] == "MMAM" and ix.loc["a", "exit_code"] == 0
    assert ix.loc["a", "metrics/loss"] == 1.0 and ix.loc["b", "eval/acc"] == 0.75
    assert ix.loc["c", "status"] == "pending" and pd.isna(ix.loc["c", "metrics/loss"])
    assert list(ix.columns[:5]) == ["path", "status", "exit_code", "lr", "layers"]

    df = load_sweep(os.path.join(tmp, "sweep.h5")).set_index("name")
    assert df.loc["a", "lr"] == 0.001 and df.loc["b", "lr"] == 0.003
    assert df.loc["a", "metrics/loss"] == 1.0 and df.loc["b", "metrics/loss"] == 0.5
    assert df.loc["b", "eval/acc"] == 0.75 and df.loc["a", "step"] == 2
    assert df.loc["a", "status"] == "done" and df.loc["b", "status"] == "running" and df.loc["c", "status"] == "queued"
    assert "model" not in df.columns, "sweep_keys limits the hyper-parameter columns"
    try:
        load_run(os.path.join(tmp, "sweep.h5"))
        raise AssertionError("a sweep index is not a run")
    except ValueError as e:
        assert "not an m2lab run file" in str(e)
    for name in ("a.h5", "b.h5", "sweep.h5", "index.h5"):
        os.unlink(os.path.join(tmp, name))
    os.rmdir(tmp)
    print("m2lab_runs selftest: ok")


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--selftest"]:
        _selftest()
    else:
        for p in sys.argv[1:]:
            _summary(p)
