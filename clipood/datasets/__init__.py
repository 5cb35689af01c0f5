"""Datasets: specs (`specs`), `build_dataset` (`dataset`), image folders (`folders`), the Hugging Face reader (`hf`),
the up-front data checks (`checks`) and k-shot sampling (`fewshot`). Named suites are the stable module
`clipood.suites`."""
