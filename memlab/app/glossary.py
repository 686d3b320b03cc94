"""The words a first-time visitor meets, defined as the papers define them, and the papers themselves:
data the page shows (every number links to its term)."""
from ..scorenorm import VERIFY  # the verification stage's settings, as the built-in world's index records them

CITATIONS = """
- Somepalli, Singla, Goldblum, Geiping, Goldstein. *Diffusion Art or Digital Forgery? Investigating Data
  Replication in Diffusion Models.* CVPR 2023. (SSCD > 0.5 replication, split product)
- Somepalli et al. *Understanding and Mitigating Copying in Diffusion Models.* NeurIPS 2023. (dataset
  similarity, background, duplication controls, GNI / RNA / RT / CWR mitigations)
- Pizzi, Roy, Ravindra, Goyal, Douze. *A Self-Supervised Descriptor for Image Copy Detection.* CVPR 2022. (SSCD)
- Carlini et al. *Extracting Training Data from Diffusion Models.* USENIX Security 2023. (pixel-space, tiled;
  the clique of near-identical generations, a detector)
- Wen, Liu, Chen, Lyu. *Detecting, Explaining, and Mitigating Memorization in Diffusion Models.* ICLR 2024.
- *Memory Triggers: Unveiling Memorization in Text-To-Image Generative Models through Word-Level Duplication.*
  (keyword clusters, the hidden object, prompt variants of a cluster)
- Webster. *A Reproducible Extraction of Training Images from Diffusion Models.* arXiv 2023. (template verbatim
  copies, masked matching: the agreement share)
- Ren et al. *Unveiling and Mitigating Memorization in Text-to-image Diffusion Models through Cross Attention.*
  ECCV 2024. (`ren`: attention entropy, the beginning token's logit)
- Hintersdorf et al. *Finding NeMo: Localizing Neurons Responsible for Memorization in Diffusion
  Models.* NeurIPS 2024. (`nemo`: memorization neurons)
- Chen et al. *Exploring Local Memorization in Diffusion Models via Bright Ending Attention.* ICLR 2025. (the
  bright-ending map, localized detection, the masked score)
- Jain et al. *Classifier-Free Guidance inside the Attraction Basin May Cause Memorization.* CVPR 2025. (`jain`)
- Asthana, Belagiannis. *Detecting and Mitigating Memorization in Diffusion Models through Anisotropy of the
  Log-Probability.* ICLR 2026. (`asthana`: norm and angular alignment on pure noise)
- Jeon et al. *Understanding and Mitigating Memorization in Generative Models via Sharpness of Probability
  Landscapes.* ICML 2025. (`jeon`: the sharpness of the landscape; `sail`: the starting noise optimized)
"""


# The words a first-time visitor meets, defined as the papers define them; every number links here.
GLOSSARY = [
    ("replicated", "replicated, replication %",
     "A generation is **replicated** when its top-1 score (its similarity to the closest training image) is "
     "above the threshold. The **multi-seed replication %** is the share of seeds whose generation is "
     "replicated (Somepalli et al. 2023 count SSCD > 0.5; MemBench uses 10 seeds)."),
    ("possible", "possible copy",
     "A generation whose top-1 score is under the threshold but above a second, lower one: the score that 5% of "
     "distinct training images reach against their nearest other image (the threshold allows about 1%). Look at "
     "the pair: a copy with a colour cast or darkened often lands here. Framed orange; the verdict has three "
     "levels, **replicated**, **possible copy**, **novel**."),
    ("template", "template copy, copied region",
     "A partial copy: the generation repeats a training image's layout (a frame, a label, a background) with "
     "other content inside, as Stable Diffusion's \"template verbatim\" prompts do. In Stable Diffusion, at the "
     "last denoising step the copied region attends to the prompt's end token far more than the rest (the "
     "\"bright ending\", Chen et al., ICLR 2025; a small model may not show it: its world's card measures it); "
     "memlab records that map per seed and compares the detail (edges, marks, texture; not smooth "
     "colour) of the generation and its top-1 training image inside it. Above that masked score's own calibrated threshold, where the two images' detail also agrees in "
     "more of their small windows than its own threshold allows (Webster's masked matching; both calibrated at 1%), and not replicated as a whole, a seed is a "
     "**template copy** (framed purple). \"Show the copied region\" marks the map on both images: outlined in yellow, the rest faded."),
    ("threshold", "threshold",
     "The score above which a match counts as a copy. SSCD's is published: 0.5 for replication, and 0.75 "
     "for about 90% precision (Pizzi et al. 2022). Descriptors without a published one (memlab-copy, pixel, "
     "CLIP) are calibrated on the training set: by default the score that 1% of distinct training images "
     "exceed against their nearest other image. The app names the source beside the value."),
    ("score", "score, top-1 match, top-k",
     "The similarity of a generation's descriptor to a training image's (cosine; 1 = identical). The "
     "**top-1 match** is the training image with the highest score; **top-k** lists the k best, one per "
     "near-duplicate group. memlab-copy's verdict normalizes it (SSCD's score normalization, Pizzi et al. "
     "2022): the cosine less the mean cosine of the generation's 2 nearest *other* training images, so a "
     "copy, close to one image and no other, stands out where a shared background or texture, close to many "
     "alike, does not; the generation is also compared as its mirror image and brightened, and the best "
     "is kept (a mirrored or darkened copy is a copy). Where the index keeps its training images, the best "
     f"{VERIFY['candidates']} matches are then verified on the images: the score gains {VERIFY['weight']:g} x the "
     "correlation of the two images' fine detail (edges and marks, whatever their colour) in the central "
     f"{VERIFY['region']:.0%} of each side, so a tinted or "
     "darkened copy keeps its score, while two pictures on the same background, or in the same frame, do not. "
     "The plain cosine is shown beside it."),
    ("descriptor", "descriptor",
     "The model that turns an image into a vector for copy detection: **SSCD** (Pizzi et al. 2022, trained "
     "to survive crops, colour changes and overlays), **CLIP** (semantic: similar content, not only copies), "
     "**pixel** (Carlini et al. 2023: distance of downscaled pixels, no weights) and **memlab-copy** (SSCD's "
     "recipe, trained by memlab on its own images). The built-in world needs its own: SSCD's weights score most "
     "of its small scenes above 0.5 against some other scene, and most of its model's copies below 0.5 against "
     "their own image (the benchmarks' SSCD cross-check). Scores from different descriptors or presets are not "
     "comparable; each is named with its model and preprocessing preset."),
    ("dataset-similarity", "dataset similarity",
     "The 95th percentile of the generations' top-1 scores (Somepalli et al. 2023, DCR). Over a few seeds "
     "it is close to the maximum."),
    ("background", "background",
     "The same statistic for the training set itself: each training image against its nearest *other* "
     "training image. **Distinct** background: one image per near-duplicate group against the nearest image "
     "of another group. A model copies more than the data copies itself when its generations sit to the "
     "right of the background."),
    ("copies", "copies in training (duplication)",
     "How many times an image occurs in the training set: itself and its near-duplicates (images whose "
     "descriptor similarity is above the duplicate cut, joined into groups). Heavily duplicated images are "
     "the ones models memorize (Carlini et al. 2023; Somepalli et al. 2023)."),
    ("ddf", "ddf (duplication factor)",
     "How many times a planted image was repeated in the built-in world's training set (DCR duplicates a "
     "share of images with a sampling weight ddf). **Full** duplication repeats image and caption; "
     "**partial** repeats the image with other captions."),
    ("detection", "detection (wen, ren, asthana, bright_ending, jeon, carlini)",
     "‖ε(x_t, prompt) − ε(x_t, empty)‖: how strongly the prompt steers the first denoising step, averaged "
     "over generations (Wen et al. 2024). Memorized prompts give large values before any image exists. "
     "There is no universal threshold; compare prompts on the same model. The page shows five more, each "
     "from its paper: **ren**, the entropy of the first step's attention over the prompt's tokens (Ren et al. "
     "2024; memorized prompts draw it away from the beginning token, so it spreads and rises); **asthana**, the guidance's norm and its angle to the "
     "unconditional prediction on pure noise (Asthana and Belagiannis 2026); **bright_ending**, Wen's score "
     "counted inside the region the prompt's end token lights at the last step (Chen et al. 2025); **jeon**, "
     "how sharply the prompt's probability peaks around the starting noise (Jeon et al. 2025); **carlini**, the "
     "largest group of a prompt's generations that are near-identical to one another, as a share of the seeds "
     "(Carlini et al. 2023). Each is higher for a prompt more likely memorized; the world's card gives how well "
     "each tells memorized prompts apart on its model."),
    ("mitigation", "mitigation (none, rna, rt, cwr, gni, wen, ren, nemo, jain, sail)",
     "A change at generation time that reduces copying (Somepalli et al. 2023): **rna** inserts k random "
     "numbers into the prompt, **rt** k random tokens, **cwr** repeats k words of the prompt, **gni** adds "
     "Gaussian noise (λ) to the text embedding; **wen** optimizes the prompt embedding to lower the detection "
     "score (Wen et al. 2024); **ren** shifts cross-attention to the beginning token (Ren et al. 2024); "
     "**nemo** switches off the few value neurons that carry a memorized prompt (Hintersdorf et al. 2024); "
     "**jain** guides weakly (or not at all) until a transition, then normally (Jain et al. 2025); **sail** "
     "moves a seed's starting noise off the sharp peak a memorized prompt makes, until its sharpness loss falls "
     "below a target, leaving noise already below it untouched (Jeon et al. 2025). Compared "
     "on the same seeds, a row differs from `none` only by the mitigation."),
    ("alignment", "alignment",
     "Whether a generation shows what its prompt names: a mitigation that ignores the prompt also stops "
     "copying, so its price is shown beside its effect. Stable Diffusion worlds: CLIP score (cosine of image "
     "and prompt embeddings); the built-in world: a classifier trained on the world's own renders gives the "
     "probability of the shapes, colours and background the prompt names."),
    ("hidden-object", "hidden object",
     "An object that comes along in the generations of a word's prompts though no caption names it: Memory "
     "Triggers found the US flag in 10% of about 1,000 LAION images captioned \"astronaut\", and in 24% to 98% "
     "of the generations of four astronaut prompts. The built-in world plants a flag in 30% of its lighthouses; the generations of a prompt "
     "holding \"lighthouse\" are checked for it by a classifier trained on the world's lighthouse renders (other "
     "prompts and a mitigation's generations are not: it knows no other scene)."),
    ("interval", "95% interval, seeds fewer / more, p",
     "How sure a replication % over a few seeds is. The **95% interval** (Wilson's) is the range of true rates the "
     "count is consistent with: 6 of 8 seeds replicated fits anything from 41% to 93%. A mitigation on the same "
     "seeds is compared seed by seed: the seeds it stopped copying (**fewer**) and the ones it made copy (**more**); "
     "**p** (the exact McNemar test) is how often a mitigation that changes nothing would split them at least that "
     "unevenly: 4 fewer and 0 more gives p = 0.125, so halving 8 seeds is not yet evidence."),
    ("seed", "seed",
     "The number that fixes a generation's starting noise: the same prompt, seed and settings give the same "
     "image, so strategies compared on the same seeds are compared fairly."),
    ("partial", "partial run",
     "A run stopped (or still running) before all its seeds finished: what finished is shown, and an export "
     "of it is named and marked partial."),
]


def glossary_markdown() -> str:
    """The glossary, one anchor per term (``#g-<key>``), under the ``#glossary`` anchor."""
    items = "\n".join(f'- <a id="g-{key}"></a>**{term}**: {text}' for key, term, text in GLOSSARY)
    return f'<a id="glossary"></a>\n\n## Glossary\n\n{items}'


def g(key: str, label: str = "?") -> str:
    """A link to a glossary term, for numbers and the words they carry."""
    return f"[{label}](#g-{key})"
