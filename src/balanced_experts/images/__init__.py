"""Images of a list file, as batches of normalised tensors for training and inference.

- :mod:`.spec`: :class:`~.spec.InputSpec`, how images become network inputs (the config's
  ``input`` section).
- :mod:`.augment`: the augmentation recipes (``input.augment``), each defined once: its
  torchvision transforms (the reference), the file path's worker crop and batch-wise rest,
  the device path's form, its eval transform.
- :mod:`.decoding`: image files to pixels (PIL, or torchvision's decoders, nvJPEG on CUDA),
  and the one-line error naming a file that cannot be read (:class:`~.decoding.ImageFileError`).
- :mod:`.cache`: a split decoded once into a memory-mapped ``.npy`` file.
- :mod:`.batches`: the three ways to batches: preloaded pixels, files decoded by DataLoader
  workers, files decoded on the device.
- :mod:`.source`: :class:`~.source.ImageSource`, the images of one list, which picks the way.
"""
