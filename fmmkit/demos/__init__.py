"""Tiny stand-ins for the pretrained models people hold, made locally (nothing downloads).

``python -m fmmkit.demos.tiny_diffusers_teacher --out DIR`` trains a diffusers DDPM on the built-in
digits (what ``[teacher] kind = "diffusers"`` reads); ``python -m fmmkit.demos.digits_vae --out DIR``
trains a tiny AutoencoderKL for the latent examples. Both need the ``diffusers`` extra.
"""
