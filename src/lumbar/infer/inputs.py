"""One test study's model inputs (decoded volumes -> crops for the multitask model, frames for the
sequence model), prepared in a worker process. No torch here: a spawned worker imports only this."""
from __future__ import annotations

import os
import time
import warnings

from ..data.cache import StudyCache
from ..data.catalog import Study
from ..data.volumes import study_volumes
from ..preprocess.crops import CropRegions
from ..preprocess.frames import FramesConfig, build_frames
from ..preprocess.pipeline import PreprocessConfig, build_crops, select, study_features
from ..preprocess.slice_select import SliceSelector


class StudyInputs:
    """(study, models needed) -> item: the inputs of each needed model it could prepare ("crops",
    "frames"), worker seconds per part ("decode", "multitask", "sequence") and errors. Picklable: it
    holds the slice selector and the crop and frame settings, not the networks."""

    def __init__(self, selector: SliceSelector | None, regions: CropRegions | None, pcfg: PreprocessConfig | None,
                 fcfg: FramesConfig | None, cache: StudyCache, fault: str = ""):
        self.selector, self.regions, self.pcfg, self.fcfg = selector, regions, pcfg, fcfg
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
        item: dict = {"study_id": st.study_id, "errors": [], "seconds": {}}
        t = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # per-file DICOM chatter; failures are reported below
                vols = study_volumes(st, self.cache)
        except Exception as e:  # anything: this study falls back, the run goes on
            item["errors"].append(f"decode: {type(e).__name__}: {e}")
            return item
        item["seconds"]["decode"] = time.perf_counter() - t
        if not vols:
            item["errors"].append("no readable series")
            return item
        sel = None  # the stage-one selection, shared by the crops and the axial frames
        if "multitask" in need and self.regions is not None:
            t = time.perf_counter()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)  # sklearn feature-name chatter
                    sel = select(study_features(st, self.cache, vols), self.selector)
                    item["crops"] = build_crops(st, vols, sel, self.regions, self.pcfg)
            except Exception as e:
                item["errors"].append(f"crops: {type(e).__name__}: {e}")
            item["seconds"]["multitask"] = time.perf_counter() - t
        if "sequence" in need and self.fcfg is not None:
            t = time.perf_counter()
            try:
                if sel is None and self.fcfg.axial == "levels" and self.selector is not None:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", UserWarning)
                        sel = select(study_features(st, self.cache, vols), self.selector)
                item["frames"] = build_frames(vols, self.fcfg, selection=sel)
            except Exception as e:
                item["errors"].append(f"frames: {type(e).__name__}: {e}")
            item["seconds"]["sequence"] = time.perf_counter() - t
        return item
