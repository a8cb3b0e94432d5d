"""The potential: a matgl potential fine-tuned on DFT phonons (a folder of datasets, or phononDB at scale)."""
