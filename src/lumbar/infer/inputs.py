"""One test study's model inputs, prepared in a worker process: decoded volumes -> each wanted model's
input ("crops": stage one's slice selection and crops; "frames": the per-series frames). No torch here:
a spawned worker imports only this."""
from __future__ import annotations

import os
import time
import warnings

from ..data.cache import StudyCache
from ..data.catalog import Study
from ..data.volumes import study_volumes
from ..preprocess.crops import CropRegions
from ..preprocess.frames import build_frames
from ..preprocess.pipeline import PreprocessConfig, preprocess_study, select_slices
from ..preprocess.slice_select import SliceSelector

INPUT_KINDS = ("crops", "frames")


class StudyInputs:
    """(study, models needed) -> item: "inputs" (model -> its prepared input, for each needed model it
    could prepare), worker seconds ("decode", and per model) and errors. `wanted` maps each model to
    (input kind, the input's settings). Picklable: it holds the slice selector and the settings, not
    the networks."""

    def __init__(self, selector: SliceSelector | None, regions: CropRegions | None, pcfg: PreprocessConfig | None,
                 wanted: dict[str, tuple[str, object]], cache: StudyCache, fault: str = ""):
        unknown = {kind for kind, _ in wanted.values()} - set(INPUT_KINDS)
        if unknown:
            raise ValueError(f"unknown input kinds {sorted(unknown)}; known: {INPUT_KINDS}")
        self.selector, self.regions, self.pcfg, self.wanted = selector, regions, pcfg, wanted
        self.cache, self.fault = cache, fault

    def _inject(self, study_id: int) -> None:
        kind, _, arg = self.fault.partition(":")
        if arg == str(study_id):
            if kind == "die":
                os._exit(137)  # what the kernel's OOM killer leaves
            if kind == "hang":
                time.sleep(10 ** 6)

    def __call__(self, task: tuple[Study, frozenset]) -> dict:
        st, need = task
        if self.fault:
            self._inject(st.study_id)
        item: dict = {"study_id": st.study_id, "errors": [], "seconds": {}, "inputs": {}}
        t = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # per-file DICOM chatter; failures are reported below
                vols = study_volumes(st, self.cache)
        except Exception as e:  # anything: this study falls back, the run goes on
            item["errors"].append(f"decode: {type(e).__name__}: {e}")
            return item
        item["seconds"]["decode"] = time.perf_counter() - t
        return self.prepare(st, vols, need, item)

    def prepare(self, st: Study, vols: dict, need, item: dict | None = None) -> dict:
        """The item from decoded volumes: each needed model's input (what the input probe re-makes too)."""
        item = item if item is not None else {"study_id": st.study_id, "errors": [], "seconds": {}, "inputs": {}}
        if not vols:
            item["errors"].append("no readable series")
            return item
        selection: list = []  # the stage-one selection, made once and shared by crops and axial frames

        def selected():
            if not selection:
                selection.append(select_slices(st, self.selector, self.cache, vols))
            return selection[0]

        built: dict[str, dict] = {}  # models that read the same input with the same settings share it
        for name in sorted(need, key=lambda m: self.wanted.get(m, ("",))[0]):  # crops first: they select
            if name not in self.wanted:
                continue
            kind, settings = self.wanted[name]
            same = f"{kind} {settings!r}"
            t = time.perf_counter()
            try:
                if same in built:
                    item["inputs"][name] = built[same]
                elif kind == "crops":
                    if self.regions is None:
                        continue
                    item["inputs"][name] = preprocess_study(st, self.selector, "", self.regions, self.pcfg,
                                                            self.cache, vols, selected())
                else:
                    placed = settings.uses_selection() and self.selector is not None
                    item["inputs"][name] = build_frames(vols, settings, selection=selected() if placed else None)
                built[same] = item["inputs"][name]
            except Exception as e:
                item["errors"].append(f"{name}: {type(e).__name__}: {e}")
            item["seconds"][name] = time.perf_counter() - t
        return item
