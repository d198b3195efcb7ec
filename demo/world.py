"""The fictional Verdantia garden-device line: crisp facts, question phrasings, documents.

The demo fine-tunes a small model on documents about these products and then checks its
answers to held-out questions by string match, so every fact has one short, unambiguous
answer (a number, a name, a code) that no other fact's answer sentence contains. Everything
here is pure and deterministic given a ``random.Random``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from core.loop.answers import answer_matches

COMPANY = "Verdantia"
APP_NAME = "Verdantia Grow"


@dataclass(frozen=True)
class Product:
    """One product: its name, category and (attribute, answer) pairs."""

    name: str
    category: str
    values: tuple[tuple[str, str], ...]
    error_condition: str = ""  # what the product's error code means, if it has one

    @property
    def slug(self) -> str:
        return self.name.lower().replace(" ", "-")


@dataclass(frozen=True)
class Fact:
    """A checkable fact: ``questions`` may be trained on, ``heldout_questions`` never are."""

    id: str
    product: str
    attribute: str
    answer: str
    questions: tuple[str, ...]
    heldout_questions: tuple[str, ...]
    answer_sentence: str


@dataclass(frozen=True)
class _Wording:
    sentence: str  # the canonical answer sentence
    statements: tuple[str, ...]  # other ways documents state the fact
    questions: tuple[str, ...]
    heldout: tuple[str, ...]


def _v(**values: str) -> tuple[tuple[str, str], ...]:
    return tuple(values.items())


# fmt: off
PRODUCTS: tuple[Product, ...] = (
    Product("Heron H2", "smart sprinkler controller", _v(
        model_number="VH-2041", price="$149", battery_life="36 hours", warranty="2 years",
        reset_button="Droplet", reset_hold="10 seconds", error_code="E14", firmware="4.2.1",
    ), "the water pressure is too low"),
    Product("Wren W1", "soil moisture sensor", _v(
        model_number="VW-1187", price="$39", battery_life="2200 hours", warranty="1 year",
        wireless_range="60 meters", hub="Hearthlink", error_code="E22", firmware="2.7.3",
    ), "the probe is not in the soil"),
    Product("Kestrel K5", "robotic lawn mower", _v(
        model_number="VK-5530", price="$899", battery_life="3 hours", warranty="3 years",
        reset_button="Acorn", reset_hold="15 seconds", error_code="E31",
        cutting_width="28 centimeters", firmware="5.0.8",
    ), "the blade is jammed"),
    Product("Finch F3", "garden weather station", _v(
        model_number="VF-3302", price="$229", battery_life="72 hours", wireless_range="150 meters",
        hub="Casa Core", release_year="2020", error_code="E45", firmware="3.1.6",
    ), "the rain gauge is blocked"),
    Product("Osprey O7", "smart pond pump", _v(
        model_number="VO-7715", price="$189", warranty="5 years", flow_rate="2400 liters",
        reset_button="Ripple", reset_hold="12 seconds", color="Lagoon Blue", firmware="1.9.4",
    )),
    Product("Sparrow S4", "smart grow light", _v(
        model_number="VS-4460", price="$79", wireless_range="25 meters", hub="Brightnest",
        light_output="1800 lumens", color="Sunflower Yellow", release_year="2024",
        firmware="2.3.5",
    )),
    Product("Magpie M9", "garden hub", _v(
        model_number="VM-9008", price="$119", battery_life="12 hours", warranty="4 years",
        wireless_range="300 meters", reset_button="Feather", reset_hold="20 seconds",
        release_year="2017", firmware="6.4.2",
    )),
)
# fmt: on
_COMPANY_ENTRY = Product(
    COMPANY, "garden technology company", _v(app="Verdantia Grow", founded="2012")
)

_WORDING: dict[str, _Wording] = {
    "model_number": _Wording(
        "The model number of the {p} is {a}.",
        ("Every {p} carries the model number {a} on the label underneath.",
         "When you contact support, quote model number {a} for the {p}.",
         "The {p} is sold under model number {a}.",
         "Look for model number {a} to be sure you have a genuine {p}.",
         "Retailers list the {p} as model {a}."),
        ("What is the model number of the {p}?", "Which model number does the {p} have?",
         "What model number should I quote for the {p}?"),
        ("If I need to order a {p}, which model number do I ask for?",
         "The {p} is identified by which model number?"),
    ),
    "price": _Wording(
        "The {p} costs {a}.",
        ("The {p} retails for {a}.", "You can buy the {p} for {a} from the Verdantia store.",
         "At {a}, the {p} is one of the easiest upgrades for a garden.",
         "The recommended retail price of the {p} is {a}.", "Expect to pay {a} for a new {p}."),
        ("How much does the {p} cost?", "What is the price of the {p}?",
         "What does a new {p} sell for?"),
        ("How many dollars would I spend to buy a {p}?", "What is the price tag on the {p}?"),
    ),
    "battery_life": _Wording(
        "The {p} battery lasts {a} on a full charge.",
        ("A full charge keeps the {p} running for {a}.",
         "Battery life on the {p} is rated at {a}.",
         "The {p} runs for {a} before it needs to be recharged.",
         "Expect about {a} of battery life from the {p}.",
         "On battery power alone the {p} lasts {a}."),
        ("How long does the {p} battery last?", "What is the battery life of the {p}?",
         "How many hours does the {p} run on a full charge?"),
        ("After charging my {p} fully, how many hours until it runs out?",
         "For how long can the {p} operate on one battery charge?"),
    ),
    "warranty": _Wording(
        "The warranty on the {p} lasts {a}.",
        ("Verdantia covers the {p} with a warranty of {a}.",
         "The {p} is protected by a limited warranty of {a}.",
         "Warranty coverage for the {p} runs for {a} from the date of purchase.",
         "If the {p} fails within {a} of purchase, the warranty covers it."),
        ("How long is the warranty on the {p}?", "What warranty period does the {p} have?",
         "How many years of warranty come with the {p}?"),
        ("For how many years is the {p} covered if it breaks?",
         "What is the length of the {p} guarantee?"),
    ),
    "wireless_range": _Wording(
        "The {p} has a maximum wireless range of {a}.",
        ("The {p} can talk to its hub from up to {a} away.",
         "Wireless range on the {p} reaches {a} in open air.",
         "Keep the {p} within {a} of its hub for a reliable link.",
         "Signals from the {p} carry up to {a}."),
        ("What is the maximum range of the {p}?", "How far can the {p} be from its hub?",
         "What wireless range does the {p} have?"),
        ("How many meters away from the hub can I place my {p}?",
         "What is the farthest distance at which the {p} still connects?"),
    ),
    "reset_button": _Wording(
        "To factory reset the {p}, press and hold the {a} button.",
        ("The {a} button on the {p} doubles as its factory reset button.",
         "A factory reset of the {p} starts by holding down the {a} button.",
         "If the {p} stops responding, hold the {a} button to reset it.",
         "The reset control on the {p} is the {a} button."),
        ("Which button resets the {p}?", "What button do I hold to factory reset the {p}?",
         "Which button is used for a factory reset on the {p}?"),
        ("To wipe my {p} back to factory settings, which button should I press?",
         "Name the button that restores the {p} to factory defaults."),
    ),
    "reset_hold": _Wording(
        "To factory reset the {p}, hold the reset button for {a}.",
        ("Hold the reset button on the {p} for {a} until the light blinks.",
         "The {p} resets after its reset button is held for {a}.",
         "Keep the reset button of the {p} pressed for {a} to restore factory settings.",
         "Releasing the reset button before {a} have passed will not reset the {p}."),
        ("How long do I hold the reset button on the {p}?",
         "For how many seconds must the {p} reset button be held?",
         "How long is the reset press on the {p}?"),
        ("What is the hold time needed to factory reset the {p}?",
         "How many seconds until the {p} resets when I keep the button down?"),
    ),
    "error_code": _Wording(
        "The {p} shows error code {a} when {cond}.",
        ("Error {a} on the {p} means that {cond}.", "If {cond}, the {p} displays code {a}.",
         "Code {a} appears on the {p} whenever {cond}.",
         "Seeing {a} on your {p}? It means {cond}.", "The {p} reports {a} when {cond}."),
        ("Which error code does the {p} show when {cond}?",
         "What code does the {p} display if {cond}?",
         "What error appears on the {p} when {cond}?"),
        ("My {p} has a problem: {cond}. What error code will it report?",
         "Which code signals that {cond} on the {p}?"),
    ),
    "firmware": _Wording(
        "The latest firmware version for the {p} is {a}.",
        ("Firmware {a} is the current release for the {p}.",
         "Update the {p} to firmware {a} to get the newest fixes.",
         "The {p} currently ships with firmware version {a}.",
         "Check that your {p} reports firmware {a} in the app."),
        ("What is the latest firmware version for the {p}?",
         "Which firmware version is current on the {p}?", "What firmware should the {p} run?"),
        ("Which software release is the newest for the {p}?",
         "What version number does the newest {p} firmware have?"),
    ),
    "release_year": _Wording(
        "The {p} was released in {a}.",
        ("Verdantia launched the {p} in {a}.", "The {p} first went on sale in {a}.",
         "Since its launch in {a}, the {p} has received regular updates.",
         "The {p} arrived in stores in {a}."),
        ("When was the {p} released?", "In what year did the {p} come out?",
         "What year was the {p} launched?"),
        ("Since which year has the {p} been available?",
         "Which year did the {p} first reach customers?"),
    ),
    "color": _Wording(
        "The {p} comes in {a}.",
        ("The {p} is finished in {a}.", "Every {p} ships in a {a} housing.",
         "The only color available for the {p} is {a}.",
         "The {a} finish of the {p} blends into most gardens."),
        ("What color is the {p}?", "Which color does the {p} come in?",
         "What finish does the {p} have?"),
        ("If I order a {p}, what color will the housing be?",
         "Which shade is the {p} available in?"),
    ),
    "hub": _Wording(
        "The {p} is compatible with the {a} hub.",
        ("Besides the Verdantia app, the {p} works with the {a} hub.",
         "The {p} pairs with the {a} hub for whole-house control.",
         "Owners can connect the {p} to a {a} hub.",
         "Third-party control of the {p} is supported through the {a} hub."),
        ("Which third-party hub is the {p} compatible with?", "What hub works with the {p}?",
         "Which smart home hub supports the {p}?"),
        ("Can I control the {p} from another hub, and if so which one?",
         "Name the third-party hub that the {p} pairs with."),
    ),
    "flow_rate": _Wording(
        "The {p} pumps up to {a} of water per hour.",
        ("At full power the {p} moves {a} of water every hour.",
         "The {p} is rated for a flow of {a} per hour.",
         "With a maximum output of {a} per hour, the {p} suits medium ponds."),
        ("How many liters per hour can the {p} pump?", "What is the maximum flow rate of the {p}?"),
        ("How much water does the {p} move in an hour at full power?",),
    ),
    "cutting_width": _Wording(
        "The {p} has a cutting width of {a}.",
        ("The {p} cuts a strip {a} wide on every pass.",
         "Its cutting width of {a} lets the {p} finish a small lawn quickly.",
         "The blade disc of the {p} covers a width of {a}."),
        ("What is the cutting width of the {p}?", "How wide does the {p} cut?"),
        ("How wide is the strip of grass the {p} mows in one pass?",),
    ),
    "light_output": _Wording(
        "The {p} has a light output of {a}.",
        ("The {p} puts out {a} of light.", "At full brightness the {p} delivers {a}.",
         "With {a} of output, the {p} can light a whole shelf of seedlings."),
        ("How bright is the {p}?", "What is the light output of the {p}?"),
        ("How many lumens does the {p} produce at full brightness?",),
    ),
    "app": _Wording(
        "Verdantia devices are set up and controlled with the {a} app.",
        ("Download the {a} app to set up any Verdantia device.",
         "All Verdantia products are managed in the {a} app.",
         "The {a} app controls the whole Verdantia product line."),
        ("Which app controls Verdantia devices?", "What is the name of the Verdantia app?",
         "Which app do I use to set up a Verdantia product?"),
        ("What should I download on my phone to manage my Verdantia gear?",),
    ),
    "founded": _Wording(
        "Verdantia Labs was founded in {a}.",
        ("Verdantia has been making garden devices since {a}.",
         "The company behind the range, Verdantia Labs, started out in {a}.",
         "Founded in {a}, Verdantia Labs designs all of its devices in-house."),
        ("When was Verdantia Labs founded?", "In what year did Verdantia start?"),
        ("How old is the Verdantia company, that is, which year did it begin?",),
    ),
}  # fmt: skip


def _fill(template: str, product: Product, answer: str) -> str:
    return template.format(p=product.name, a=answer, cond=product.error_condition)


def _build_facts() -> tuple[Fact, ...]:
    facts = []
    for product in (*PRODUCTS, _COMPANY_ENTRY):
        for attribute, answer in product.values:
            wording = _WORDING[attribute]
            facts.append(
                Fact(
                    id=f"{product.slug}.{attribute}",
                    product=product.name,
                    attribute=attribute,
                    answer=answer,
                    questions=tuple(_fill(q, product, answer) for q in wording.questions),
                    heldout_questions=tuple(_fill(q, product, answer) for q in wording.heldout),
                    answer_sentence=_fill(wording.sentence, product, answer),
                )
            )
    return tuple(facts)


FACTS: tuple[Fact, ...] = _build_facts()
_STATEMENTS: dict[str, tuple[str, ...]] = {
    f.id: (
        f.answer_sentence,
        *(
            _fill(t, p, f.answer)
            for p in (*PRODUCTS, _COMPANY_ENTRY)
            if p.name == f.product
            for t in _WORDING[f.attribute].statements
        ),
    )
    for f in FACTS
}


def facts_by_id() -> dict[str, Fact]:
    return {fact.id: fact for fact in FACTS}


def facts_of(product_name: str) -> tuple[Fact, ...]:
    """The facts about one product (or about the company, for ``COMPANY``)."""
    return tuple(fact for fact in FACTS if fact.product == product_name)


def fact_statements(fact: Fact) -> tuple[str, ...]:
    """Every sentence the documents use to state ``fact``; the first is ``answer_sentence``."""
    return _STATEMENTS[fact.id]


def state_fact(fact: Fact, rng: random.Random) -> str:
    """One way to state ``fact``; the canonical answer sentence about a quarter of the time."""
    return rng.choice(_STATEMENTS[fact.id][1:]) if rng.random() < 0.75 else fact.answer_sentence


# --- answer checking ---------------------------------------------------------------------------
# One rule for the demo and the loop's gate (core.loop.answers).


def is_correct(fact: Fact, completion: str) -> bool:
    """Whether ``completion`` contains the fact's answer (tolerant to case, punctuation, units)."""
    return answer_matches(fact.answer, completion)


# --- document generators ------------------------------------------------------------------------
# Documents are assembled from many randomly chosen sentences with random slot fills, so two
# independently generated documents share few 5-word shingles (dedup must not merge them), while
# every product page still states every fact about its product. Lines are never blank or
# repeated, so no good document trips the quality filters.


def _options(text: str) -> tuple[str, ...]:
    return tuple(text.split("|"))


_OPENERS = _options(
    "|In practice,|For most gardens,|Out of the box,|During the growing season,|On larger plots,"
    "|According to our testers,|Once installed,|Most of the time,|In our experience,"
    "|On a small balcony,|After the first week,|Like the rest of the range,|Season after season,"
)
_SUBJECTS = _options("the {p}|your {p}|this {cat}|the device|it|the {p} unit")
_CORES = _options(
    "{s} keeps your {n} {adj}|{s} was designed with {n} in mind"
    "|{s} gives you a clear picture of how your {n} are doing|{s} fits neatly beside {n}"
    "|{s} saves a surprising amount of time around {n}"
    "|{s} takes the guesswork out of caring for {n}"
    "|{s} helps beginners look after {n}|{s} sends a friendly reminder when your {n} need attention"
    "|{s} adapts its schedule to the needs of your {n}|{s} stays quiet and out of the way near {n}"
    "|{s} shows useful trends for your {n} in the app|{s} makes weekend chores around {n} lighter"
    "|{s} handles the routine work so you can enjoy your {n}|{s} is built to survive {w}"
    "|{s} learns the rhythm of your {n} over time|{s} protects delicate {n} from {w}"
    "|{s} can be mounted close to {n} without special tools|{s} keeps a gentle eye on your {n}"
    "|{s} works with other Verdantia devices to keep {n} {adj}|{s} copes well with {w}"
    "|{s} pays for itself once your {n} stay {adj}|{s} rarely needs attention, even near {n}"
)
_NOUNS = _options(
    "tomato beds|herb planters|raised beds|rose bushes|fruit trees|flower borders"
    "|vegetable patches|hedges|seedlings|potted ferns|lawn edges|berry bushes|window boxes"
    "|hanging baskets|greenhouse shelves|lavender rows|pumpkin patches|orchard rows|succulent pots"
    "|climbing beans|strawberry planters|bonsai trees|wildflower meadows|shade plants"
    "|lettuce rows|citrus pots|young saplings|water lilies|chilli plants|courgette beds"
)
_ADJS = _options("healthy|green|well watered|thriving|in good shape|on schedule|tidy|lush|strong")
_WEATHER = _options(
    "heavy rain|long dry spells|early frosts|summer heat waves|windy afternoons|foggy mornings"
    "|humid evenings|sudden hail|cold snaps|muddy spring weeks|autumn storms|scorching afternoons"
)
_TAILS = _options(
    "|| throughout the season| with very little effort| without any extra tools"
    "| from spring until late autumn| whether you are at home or away| once it has been set up"
    "| on both small and large plots| while using very little power| even on busy weeks"
    "| all year round| without constant checking| in almost any climate"
)


def _slot(rng: random.Random, template: str, product: Product) -> str:
    subject = rng.choice(_SUBJECTS).format(p=product.name, cat=product.category)
    return template.format(
        s=subject,
        p=product.name,
        cat=product.category,
        n=rng.choice(_NOUNS),
        adj=rng.choice(_ADJS),
        w=rng.choice(_WEATHER),
        when=rng.choice(_WHEN),
    )


def _filler(rng: random.Random, product: Product) -> str:
    core = _slot(rng, rng.choice(_CORES), product)
    opener = rng.choice(_OPENERS)
    sentence = f"{opener} {core}" if opener else core
    return sentence[0].upper() + sentence[1:] + rng.choice(_TAILS) + "."


def _fillers(rng: random.Random, product: Product, low: int, high: int) -> list[str]:
    return [_filler(rng, product) for _ in range(rng.randint(low, high))]


def _pick_product(rng: random.Random, product: Product | None) -> Product:
    return product if product is not None else rng.choice(PRODUCTS)


def _state(rng: random.Random, fact: Fact, stated: list[str] | None) -> str:
    if stated is not None:
        stated.append(fact.id)
    return state_fact(fact, rng)


_SECTIONS = {
    "overview": (
        _options("Overview|About the {p}|Introduction|What the {p} does|Getting to know the {p}"),
        ("release_year", "color", "app", "founded"),
    ),
    "specs": (
        _options("Specifications|Technical details|Key specs|Hardware at a glance|Compatibility"),
        ("model_number", "price", "battery_life", "wireless_range", "hub", "flow_rate",
         "cutting_width", "light_output", "firmware"),
    ),
    "care": (
        _options("Troubleshooting|Reset and error codes|When something goes wrong|Recovery steps"),
        ("reset_button", "reset_hold", "error_code"),
    ),
    "warranty": (
        _options("Warranty and support|Coverage|Support and guarantees|After-sales service"),
        ("warranty",),
    ),
}  # fmt: skip
_TIPS_HEADINGS = _options("Tips|Good to know|Tips from our testers|Getting the most out of it")
_DOC_TITLES = _options(
    "User guide|Product documentation|Owner's manual|Quick reference|Setup and care guide"
    "|Product handbook"
)


def product_doc_page(
    rng: random.Random, product: Product | None = None, stated: list[str] | None = None
) -> str:
    """A documentation page stating every fact about one product (and the company's facts).

    ``stated`` collects the ids of the facts the page states (for coverage accounting).
    """
    product = _pick_product(rng, product)
    facts = facts_of(product.name) + facts_of(COMPANY)
    names = ["overview", *rng.sample(["specs", "care", "warranty"], 3)]
    lines = [f"{product.name} {product.category} - {rng.choice(_DOC_TITLES)}"]
    for name in names:
        headings, attributes = _SECTIONS[name]
        sentences = [_state(rng, f, stated) for f in facts if f.attribute in attributes]
        sentences += _fillers(rng, product, 1, 3)
        rng.shuffle(sentences)
        lines += [rng.choice(headings).format(p=product.name), " ".join(sentences)]
    if rng.random() < 0.6:
        lines += [rng.choice(_TIPS_HEADINGS), " ".join(_fillers(rng, product, 1, 3))]
    return "\n".join(lines)


_PERSONAS = {
    "first-time gardener": (
        "I am new to all of this, so sorry if this is a basic question.",
        "This is my first season growing anything, so please bear with me.",
        "I have never owned a smart garden gadget before.",
    ),
    "landscaping contractor": (
        "I install these for clients and need a quick, precise answer.",
        "I manage a dozen client gardens and this keeps coming up.",
        "My crew needs to know this before our next job.",
    ),
    "retired hobbyist": (
        "I have plenty of time for the garden these days and like to get things right.",
        "My grandchildren set the app up for me, but I want to understand it myself.",
        "After forty years of gardening by hand, this gadget is a new adventure for me.",
    ),
    "busy parent": (
        "I only get a few minutes in the evening, so a short answer helps.",
        "Between school runs and work, I barely have time to read the manual.",
        "The kids love watching the garden app, but I need the facts.",
    ),
    "small farm owner": (
        "We rely on this across several rows of vegetables.",
        "On the farm every hour counts, so I want to plan ahead.",
        "Our market stall depends on a good harvest this year.",
    ),
    "balcony grower": (
        "I only have a small balcony with a few pots.",
        "Space is tight in my apartment, so every device has to earn its place.",
        "My balcony gets full sun all afternoon, which makes watering tricky.",
    ),
    "community garden volunteer": (
        "I look after the shared beds at our community garden.",
        "Several volunteers use the same device, so we want to get this right.",
        "Our garden committee asked me to find out before the next meeting.",
    ),
    "frustrated customer": (
        "Honestly, I am getting a bit frustrated here.",
        "This is the second time I have had to write in about this.",
        "I expected this to be much clearer in the documentation.",
    ),
}
_GREETINGS = _options(
    "Hi there!|Hello.|Good morning.|Hey team!|Dear Verdantia support.|Hi!|Hello support team."
    "|Good afternoon.|Greetings!|Hi folks!"
)
_WHEN = _options(
    "last weekend|a few weeks ago|last spring|just before the holidays|earlier this month"
    "|at the start of the season|recently|last autumn|over the summer|after moving house"
)
_CONTEXT = _options(
    "I bought the {p} {when} for my {n}.|We set it up next to the {n} {when}."
    "|It has been running without trouble since {when}.|A friend recommended the {p} for {n}."
    "|The app is installed and the device shows up fine."
    "|I already read through the manual but could not find this."
    "|Mostly we use it to look after our {n}.|Everything else about the {p} has been great so far."
    "|Our {n} suffered during {w} last year, so I am being careful."
    "|I am comparing it with an older device I used for my {n}."
    "|My partner asked me the same thing {when} and I had no answer."
    "|We moved the {p} closer to the {n} {when}.|I want everything ready before {w} arrive."
)
_QUESTION_LEADS = _options(
    "|Quick question: |My question is simple. |So here is what I want to know: "
    "|Could you tell me this: |One more thing. "
)
_CLOSINGS = _options(
    "Thanks in advance.|Thank you!|Cheers.|Appreciate the help.|Looking forward to your reply."
    "|Thanks for your time.|Kind regards."
)
_TICKET_SUBJECTS = _options(
    "Question about my {p}|{p} help needed|Quick {cat} question|Need info on the {p}"
    "|{p}: a question before the season|Help with {p} details|Checking something about the {p}"
)
_AGENT_OPENERS = _options(
    "Thanks for reaching out about your {p}.|Happy to help with this one."
    "|Good question, this comes up quite often.|Sorry for the slow reply, we have had a busy week."
    "|Thanks for the detailed message.|Great to hear from you."
    "|Thank you for getting in touch with Verdantia Support."
)
_AGENT_SIGNOFFS = _options(
    "Best regards, {agent} from Verdantia Support.|Happy gardening, {agent}."
    "|Let us know if anything else comes up. {agent}, Verdantia Support.|All the best, {agent}."
)
_AGENTS = _options("Maya|Tomas|Ines|Jonah|Priya|Felix|Aiko|Rosa|Dmitri|Leila")
_CUSTOMERS = _options(
    "Alex|Sam|Jordan|Casey|Morgan|Riley|Taylor|Jamie|Robin|Avery|Quinn|Harper|Elliot|Noa|Rowan"
)


def support_ticket(
    rng: random.Random,
    product: Product | None = None,
    stated: list[str] | None = None,
    note: str = "",
) -> str:
    """A support ticket: a customer (with a persona) asks about one fact, an agent answers.

    ``note`` is an extra sentence the customer writes (the corpus generator plants PII there).
    """
    product = _pick_product(rng, product)
    candidates = facts_of(product.name) + facts_of(COMPANY)[: rng.random() < 0.1]
    fact = rng.choice(candidates)
    persona, tones = rng.choice(list(_PERSONAS.items()))
    context = [_slot(rng, t, product) for t in rng.sample(_CONTEXT, rng.randint(3, 5))]
    question = rng.choice(_QUESTION_LEADS) + rng.choice(fact.questions)
    customer = [rng.choice(_GREETINGS), *context, rng.choice(tones), *([note] if note else [])]
    customer += [question, rng.choice(_CLOSINGS)]
    agent_name = rng.choice(_AGENTS)
    agent = [_slot(rng, rng.choice(_AGENT_OPENERS), product), _state(rng, fact, stated)]
    agent += _fillers(rng, product, 3, 5)
    agent.append(rng.choice(_AGENT_SIGNOFFS).format(agent=agent_name))
    name = f"{rng.choice(_CUSTOMERS)} {chr(rng.randint(65, 90))}."
    return "\n".join(
        [
            "Subject: " + _slot(rng, rng.choice(_TICKET_SUBJECTS), product),
            f"Customer ({name}, {persona}): " + " ".join(customer),
            f"Agent ({agent_name}): " + " ".join(agent),
        ]
    )


_NOTES_TITLES = _options(
    "{p} firmware {fw} release notes|Release notes: {p}, firmware {fw}"
    "|What's new in {p} firmware {fw}|{p} update {fw}: changes and fixes"
)
_NEW_HEADINGS = _options("What's new|Improvements|Changes in this release|Highlights")
_FIX_HEADINGS = _options("Fixes|Bug fixes|Resolved issues")
_UPDATE_HEADINGS = _options("How to update|Installing the update|Updating your device")
_FEATURES = _options(
    "scheduling|battery reporting|wireless pairing|the status light|notification timing"
    "|weather adjustments|offline mode|sensor calibration|the setup flow|history charts"
    "|firmware downloads|time zone handling"
)
_ISSUES = _options(
    "the app showed an outdated status|schedules skipped a day after a power cut"
    "|notifications arrived twice|the status light stayed on at night"
    "|pairing needed several attempts|the device reconnected slowly after a router restart"
    "|history charts showed gaps|daylight saving time shifted schedules"
    "|the device ignored a paused schedule|low battery warnings came too late"
    "|the setup flow froze on the last step|the device reported the wrong time zone"
)
_NEW_ITEMS = _options(
    "Improved {f} for {n}|Better {f} during {w}|Smoother {f} when the hub is far away"
    "|Reduced energy use of {f} during {w}|Clearer messages about {f} in the app"
    "|Faster {f} after a router restart|More reliable {f} on crowded wireless networks"
)
_FIX_ITEMS = _options(
    "Fixed an issue where {i}|Resolved a rare case where {i}|Corrected behaviour when {i}"
)


def _bullets(
    rng: random.Random, templates: tuple[str, ...], count: int, product: Product
) -> list[str]:
    features, issues = rng.sample(_FEATURES, count), rng.sample(_ISSUES, count)
    return [
        "- " + _slot(rng, rng.choice(templates).replace("{f}", f).replace("{i}", i), product)
        for f, i in zip(features, issues, strict=True)
    ]


def release_notes(
    rng: random.Random, product: Product | None = None, stated: list[str] | None = None
) -> str:
    """Release notes for a product's current firmware: new features, fixes, how to update."""
    product = _pick_product(rng, product)
    facts = {f.attribute: f for f in facts_of(product.name) + facts_of(COMPANY)}
    firmware = facts["firmware"]
    title = rng.choice(_NOTES_TITLES).format(p=product.name, fw=firmware.answer)
    intro = [_state(rng, firmware, stated), *_fillers(rng, product, 2, 3)]
    extra = [facts[a] for a in ("error_code", "release_year") if a in facts and rng.random() < 0.6]
    intro += [_state(rng, fact, stated) for fact in extra]
    update = [_state(rng, facts["app"], stated), *_fillers(rng, product, 1, 3)]
    return "\n".join(
        [
            title,
            " ".join(intro),
            rng.choice(_NEW_HEADINGS),
            *_bullets(rng, _NEW_ITEMS, rng.randint(3, 5), product),
            rng.choice(_FIX_HEADINGS),
            *_bullets(rng, _FIX_ITEMS, rng.randint(2, 4), product),
            rng.choice(_UPDATE_HEADINGS),
            " ".join(update),
        ]
    )


_FAQ_TITLES = _options(
    "{p} frequently asked questions|FAQ: {p}|{p} questions and answers"
    "|Common questions about the {p}|Your {p} questions answered"
)
_FAQ_LEADS = _options("|Quick one: |We get asked this a lot: |Customers often ask: ")
_FAQ_CLOSINGS = _options(
    "Still stuck? Our support team answers every message within a day."
    "|Did not find your question here? Write to Verdantia Support from the app."
    "|More answers are waiting in the help section of the app."
    "|Tell us which questions we should add to this page next."
)


def faq_page(
    rng: random.Random, product: Product | None = None, stated: list[str] | None = None
) -> str:
    """An FAQ page: several facts about one product as question and answer pairs."""
    product = _pick_product(rng, product)
    facts = list(facts_of(product.name))
    facts = rng.sample(facts, rng.randint(4, 7))
    if rng.random() < 0.3:
        facts.append(rng.choice(facts_of(COMPANY)))
    lines = [rng.choice(_FAQ_TITLES).format(p=product.name), " ".join(_fillers(rng, product, 1, 2))]
    for fact in facts:
        answer = [_state(rng, fact, stated), *_fillers(rng, product, 0, 1)]
        lines += [
            f"Q: {rng.choice(_FAQ_LEADS)}{rng.choice(fact.questions)}",
            "A: " + " ".join(answer),
        ]
    lines.append(rng.choice(_FAQ_CLOSINGS))
    return "\n".join(lines)


DOCUMENT_KINDS = {
    "product_docs": product_doc_page,
    "support_ticket": support_ticket,
    "release_notes": release_notes,
    "faq": faq_page,
}
