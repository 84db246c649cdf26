"""`chexops export` and what it makes: ONNX fp32/int8 files with their metadata, the Bento model, the serving
image's build context, a Triton repository. May import registry and everything below it.
"""
