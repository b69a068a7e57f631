"""The towers' arithmetic beside the jitted fp32 towers: choosing a precision (`precision`), the
fast paths it can take (`bf16` on OpenVINO, `quantized` int8 on ONNX Runtime, both over graphs
built by `onnx_export`), what they share (`paths`), and the plain-numpy fp32 towers
(`numpy_encoder`) that one-shot processes and the fast paths' checks use.

Importing this package imports none of its modules (and so no runtime).
"""
