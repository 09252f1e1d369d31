"""Reading PyTorch checkpoints safely and the converted jaxuft model format.

* :mod:`jaxuft.checkpoints.torch_pickle` -- ``read_checkpoint``: a torch-free,
  code-execution-free reader for ``torch.save`` zip files.
* :mod:`jaxuft.checkpoints.format` -- ``save_model`` / ``load_model``: the
  converted-model directory (``config.json`` + ``params.safetensors``).
"""
