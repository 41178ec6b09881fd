"""Class names and prompt templates of the 11 MTIL datasets, in two conventions (data, not logic).

``official``: what the official X-TAIL code of CoDyRA and MoRAM (Artificer-AI-Lab, ``main.py`` +
``scenario_datasets/``) prompts with. One template per dataset, and evaluation and training both use
``template[0]`` (CIFAR100 carries the 18 CLIP templates, of which only the first is used). Class
names are read from the CoOp ``split_zhou_*.json`` files, with two edits made by the official code
itself: EuroSAT names get the suffix ``" satellite location"`` (``eurosat.py``) and MNIST names are
wrapped as ``number: "<torchvision name>"`` (``collections.py``), so the MNIST prompt reads
``a photo of the number: "number: "0 - zero"".``. CIFAR100 and MNIST (no CoOp split) use
torchvision's names with underscores as spaces.

For the torchvision layout (no split files) ``official_names`` rebuilds the CoOp names from the
torchvision ones with CoOp's own naming rules: Caltech101 drops ``Faces_easy`` and renames four
folders, EuroSAT uses the CoOp/official ``NEW_CNAMES`` table, Stanford Cars moves the year to the
front, Oxford Pets is lower case with underscores, SUN397 reverses its path parts, DTD, Food101 and
Aircraft keep the raw names (underscores kept, as in the split files).

``zscl``: ZSCL's MTIL lists (Zheng et al., 2023): several templates per dataset for averaging and
ZSCL's class names (``CALTECH_NAMES``, ``EUROSAT_NAMES``, ``FLOWERS_NAMES``; underscores as spaces).
"""

from __future__ import annotations

import re

PROMPT_MODES = ("official", "zscl")

# --- official X-TAIL code -----------------------------------------------------------------------
# cifar.py's `cifar10_template`, double spaces included (only the first is ever used).
OFFICIAL_CIFAR_TEMPLATES = [
    "a photo of a {}.",
    "a blurry photo of a {}.",
    "a black and white photo of a {}.",
    "a low contrast photo of a  {}.",
    "a high contrast photo of a  {}.",
    "a bad photo of a  {}.",
    "a good photo of a  {}.",
    "a photo of a small  {}.",
    "a photo of a big  {}.",
    "a photo of the  {}.",
    "a blurry photo of the  {}.",
    "a black and white photo of the  {}.",
    "a low contrast photo of the  {}.",
    "a high contrast photo of the  {}.",
    "a bad photo of the  {}.",
    "a good photo of the  {}.",
    "a photo of the small  {}.",
    "a photo of the big  {}.",
]
OFFICIAL_TEMPLATES: dict[str, list[str]] = {
    "aircraft": ["a photo of a {}, a type of aircraft."],
    "caltech101": ["a photo of a {}."],
    "cifar100": OFFICIAL_CIFAR_TEMPLATES,
    "dtd": ["{} texture."],
    "eurosat": ["a centered satellite photo of the {}."],
    "flowers": ["a photo of a {}, a type of flower."],
    "food": ["a photo of a {}, a type of food."],
    "mnist": ['a photo of the number: "{}".'],
    "pets": ["a photo of a {}, a type of pet."],
    "cars": ["a photo of a {}."],
    "sun397": ["a photo of a {}."],
}
EUROSAT_SUFFIX = " satellite location"
# eurosat.py `NEW_CNAMES` (the names CoOp wrote into split_zhou_EuroSAT.json), by torchvision folder.
EUROSAT_OFFICIAL_NAMES = {
    "AnnualCrop": "Annual Crop Land",
    "Forest": "Forest",
    "HerbaceousVegetation": "Herbaceous Vegetation Land",
    "Highway": "Highway or Road",
    "Industrial": "Industrial Buildings",
    "Pasture": "Pasture Land",
    "PermanentCrop": "Permanent Crop Land",
    "Residential": "Residential Buildings",
    "River": "River",
    "SeaLake": "Sea or Lake",
}
# CoOp's caltech101.py: ignored folders and renamed ones (the rest keep their folder name).
CALTECH_OFFICIAL_IGNORED = ("BACKGROUND_Google", "Faces_easy")
CALTECH_OFFICIAL_NAMES = {
    "airplanes": "airplane",
    "Faces": "face",
    "Leopards": "leopard",
    "Motorbikes": "motorbike",
}

# --- ZSCL lists -----------------------------------------------------------------------------------
CIFAR_TEMPLATES = [
    t
    for a in ("a", "the")
    for t in [
        f"a {q}photo of {a} {{}}."
        for q in ("", "blurry ", "black and white ", "low contrast ", "high contrast ", "bad ", "good ")
    ]
    + [f"a photo of {a} small {{}}.", f"a photo of {a} big {{}}."]
]
CALTECH_TEMPLATES = [
    t.format(a=a)
    for a in ("a", "the")
    for t in (
        "a photo of {a} {{}}.",
        "a painting of {a} {{}}.",
        "{a} plastic {{}}.",
        "a sculpture of {a} {{}}.",
        "a sketch of {a} {{}}.",
        "a tattoo of {a} {{}}.",
        "{a} toy {{}}.",
        "a rendition of {a} {{}}.",
        "{a} embroidered {{}}.",
        "{a} cartoon {{}}.",
        "{a} {{}} in a video game.",
        "{a} plushie {{}}.",
        "{a} origami {{}}.",
        "art of {a} {{}}.",
        "graffiti of {a} {{}}.",
        "a drawing of {a} {{}}.",
        "a doodle of {a} {{}}.",
    )
]
ZSCL_TEMPLATES: dict[str, list[str]] = {
    "aircraft": ["a photo of a {}, a type of aircraft.", "a photo of the {}, a type of aircraft."],
    "caltech101": CALTECH_TEMPLATES,
    "cifar100": CIFAR_TEMPLATES,
    "dtd": [
        f"a photo of {a} {{}} {w}." for a in ("a", "the") for w in ("texture", "pattern", "thing", "object")
    ],
    "eurosat": [f"a centered satellite photo of {a}{{}}." for a in ("", "a ", "the ")],
    "flowers": ["a photo of a {}, a type of flower."],
    "food": ["a photo of a {}, a type of food."],
    "mnist": ['a photo of the number: "{}".'],
    "pets": ["a photo of a {}, a type of pet."],
    "cars": [
        "a photo of a {}, a type of car.",
        "a photo of a {}.",
        "a photo of the {}.",
        "a photo of my {}.",
        "i love my {}!",
        "a photo of my dirty {}.",
        "a photo of my clean {}.",
        "a photo of my new {}.",
        "a photo of my old {}.",
    ],
    "sun397": ["a photo of a {}.", "a photo of the {}."],
}
# Caltech101 folder names whose ZSCL class name is not just the folder name with spaces.
CALTECH_NAMES = {
    "Faces": "off-center face",
    "Faces_easy": "centered face",
    "Leopards": "leopard",
    "Motorbikes": "motorbike",
    "airplanes": "airplane",
    "car_side": "side of a car",
    "cougar_body": "body of a cougar cat",
    "cougar_face": "face of a cougar cat",
    "crocodile_head": "head of a  crocodile",
    "flamingo_head": "head of a flamingo",
    "snoopy": "snoopy (cartoon beagle)",
    "yin_yang": "yin and yang symbol",
}
EUROSAT_NAMES = {
    "AnnualCrop": "annual crop land",
    "Forest": "forest",
    "HerbaceousVegetation": "brushland or shrubland",
    "Highway": "highway or road",
    "Industrial": "industrial buildings or commercial buildings",
    "Pasture": "pasture land",
    "PermanentCrop": "permanent crop land",
    "Residential": "residential buildings or homes or apartments",
    "River": "river",
    "SeaLake": "lake or sea",
}
FLOWERS_NAMES = (
    "pink primrose|hard-leaved pocket orchid|canterbury bells|sweet pea|english marigold|tiger lily|"
    "moon orchid|bird of paradise|monkshood|globe thistle|snapdragon|colt's foot|king protea|spear thistle|"
    "yellow iris|globe-flower|purple coneflower|peruvian lily|balloon flower|giant white arum lily|fire lily|"
    "pincushion flower|fritillary|red ginger|grape hyacinth|corn poppy|prince of wales feathers|"
    "stemless gentian|artichoke|sweet william|carnation|garden phlox|love in the mist|mexican aster|"
    "alpine sea holly|ruby-lipped cattleya|cape flower|great masterwort|siam tulip|lenten rose|"
    "barbeton daisy|daffodil|sword lily|poinsettia|bolero deep blue|wallflower|marigold|buttercup|"
    "oxeye daisy|common dandelion|petunia|wild pansy|primula|sunflower|pelargonium|bishop of llandaff|gaura|"
    "geranium|orange dahlia|pink-yellow dahlia|cautleya spicata|japanese anemone|black-eyed susan|"
    "silverbush|californian poppy|osteospermum|spring crocus|bearded iris|windflower|tree poppy|gazania|"
    "azalea|water lily|rose|thorn apple|morning glory|passion flower|lotus|toad lily|anthurium|frangipani|"
    "clematis|hibiscus|columbine|desert-rose|tree mallow|magnolia|cyclamen|watercress|canna lily|"
    "hippeastrum|bee balm|ball moss|foxglove|bougainvillea|camellia|mallow|mexican petunia|bromelia|"
    "blanket flower|trumpet creeper|blackberry lily"
).split("|")


def spaced(name: str) -> str:
    return name.replace("_", " ")


def templates_for(key: str, prompts: str) -> list[str]:
    """The dataset's template list in one convention (``template[0]`` first)."""
    return list((OFFICIAL_TEMPLATES if prompts == "official" else ZSCL_TEMPLATES)[key])


def zscl_names(key: str, raw: list[str]) -> list[str]:
    """ZSCL's class names from the raw torchvision names (folder / class strings)."""
    if key == "caltech101":
        return [CALTECH_NAMES.get(c, spaced(c)) for c in raw]
    if key == "eurosat":
        return [EUROSAT_NAMES.get(c, re.sub(r"(\w)([A-Z])", r"\1 \2", c).lower()) for c in raw]
    if key == "flowers":
        return list(FLOWERS_NAMES)
    return [spaced(c) for c in raw]


def _year_first(name: str) -> str:
    # CoOp stanford_cars.py: "AM General Hummer SUV 2000" -> "2000 AM General Hummer SUV"
    words = name.split(" ")
    return " ".join([words[-1], *words[:-1]])


def official_names(key: str, raw: list[str], from_split_file: bool) -> list[str | None]:
    """The official code's class names; ``None`` marks a class the official data does not have.

    ``from_split_file``: ``raw`` are the names of a CoOp split file (only the official code's own
    edits apply); otherwise they are torchvision names, mapped with CoOp's naming rules.
    """
    if key == "mnist":
        return [f'number: "{c}"' for c in raw]
    if key == "cifar100":
        return [spaced(c) for c in raw]
    if from_split_file:
        return [c + EUROSAT_SUFFIX for c in raw] if key == "eurosat" else list(raw)
    if key == "caltech101":
        return [None if c in CALTECH_OFFICIAL_IGNORED else CALTECH_OFFICIAL_NAMES.get(c, c) for c in raw]
    if key == "eurosat":
        return [EUROSAT_OFFICIAL_NAMES.get(c, c) + EUROSAT_SUFFIX for c in raw]
    if key == "cars":
        return [_year_first(c) for c in raw]
    if key == "pets":
        return [c.lower().replace(" ", "_") for c in raw]
    if key == "sun397":
        return [" ".join(reversed(c.split("/"))) for c in raw]
    if key == "flowers":
        return list(FLOWERS_NAMES)  # CoOp reads cat_to_name.json; ZSCL's list, not checked against it
    return list(raw)
