"""The onnx engine: the backbone cut at a layer, with normalisation and pooling inside the graph, exported
to ONNX once and run with onnxruntime.

The exported file is cached beside the feature cache (``<cache>/onnx/<settings>.onnx``), keyed by the
weights' sha256, layer, pooling and input size, so later runs load it without importing torch at all.
Its input is ``images``: uint8 (N, H, W, 3) RGB at the input size; its output ``features``: float32 (N, D).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from ..errors import BadInputError


def session_options(threads: int | None = None):
    import onnxruntime as ort

    from .threads import inference_threads

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or inference_threads()
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    # no busy-waiting after each run: the decoding threads need those cycles (faster end to end on 2 cores)
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


def export_module(module, example: np.ndarray, path: Path, output_names=("features",), metadata=None) -> Path:
    """Export a torch module taking uint8 NHWC images to ONNX with a dynamic batch axis (written atomically)."""
    import onnx
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.part")
    dyn = {"images": {0: "batch"}, **{n: {0: "batch"} for n in output_names}}
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.from_numpy(example),), str(tmp), input_names=["images"],
                          output_names=list(output_names), dynamic_axes=dyn, opset_version=17, dynamo=False)
    if metadata:
        m = onnx.load(str(tmp))
        for k, v in metadata.items():
            m.metadata_props.add(key=k, value=str(v))
        onnx.save(m, str(tmp))
    tmp.replace(path)
    return path


class OnnxEngine:
    name = "onnx"

    def __init__(self, onnx_path: Path, build_torch_net=None, input_size: int | tuple[int, int] = 224,
                 threads: int | None = None, quantize: str | None = None, calibration=None):
        """``build_torch_net()`` is called only when ``onnx_path`` does not exist yet (first use);
        ``input_size``: the side of a square input, or (height, width)."""
        self.path = Path(onnx_path)
        if not self.path.is_file():
            if build_torch_net is None:
                raise BadInputError(f"{self.path}: no such ONNX model")
            h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
            example = np.zeros((2, int(h), int(w), 3), np.uint8)
            fp32 = self.path if not quantize else self.path.with_name(self.path.stem + "-fp32.onnx")
            if not fp32.is_file():
                export_module(build_torch_net(), example, fp32)
            if quantize:
                quantize_int8(fp32, self.path, calibration() if callable(calibration) else calibration)
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(self.path), session_options(threads),
                                            providers=["CPUExecutionProvider"])

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"images": np.ascontiguousarray(batch, dtype=np.uint8)})[0]


def quantize_int8(src: Path, dst: Path, calibration: np.ndarray | None) -> Path:
    """Static int8 quantisation (QDQ, per-channel weights) calibrated on real images of the dataset."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if calibration is None or len(calibration) == 0:
        raise BadInputError("--quantize int8 needs calibration images (the dataset's first images are used)")

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"images": calibration[i:i + 8]} for i in range(0, len(calibration), 8)])

        def get_next(self):
            return next(self.it, None)

    pre = dst.with_name(dst.stem + "-pre.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        tmp = dst.with_suffix(f".{os.getpid()}.part")
        quantize_static(str(pre), str(tmp), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=["Conv"])
    pre.unlink(missing_ok=True)
    tmp.replace(dst)
    return dst
