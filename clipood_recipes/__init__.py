"""clipood's top layer: recipes' building blocks that wire methods (the ``adapters`` registry) to data.

Layers, each importing only the ones below it::

    recipes/*.py (scripts)  →  clipood_recipes  →  adapters  →  clipood (core: knows no method)

``clipood_recipes.settings`` holds the typed schemas of training runs, ``clipood_recipes.configure`` turns
YAML + ``key=value`` into a checked config, ``clipood_recipes.krnft`` is the KR-NFT recipe (setup / train /
evaluate / save) that ``recipes/krnft.py`` and ``recipes/ablation.py`` run, ``clipood_recipes.cli`` the
``clipood`` command.
"""
