"""A request's chat template is rendered sandboxed, within a time and a size limit: hostile templates fail fast with a
message saying what they did; ordinary templates render exactly as HF renders them."""
from __future__ import annotations

import threading
import time

import pytest

from pagedllm.entrypoints.chat_utils import ChatTemplateError, apply_chat_template, render_untrusted_template

CONV = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"},
        {"role": "assistant", "content": "Hi! How"}]


def render(template: str, **kw) -> str:
    return render_untrusted_template(template, CONV[:2], add_generation_prompt=True, **kw)


@pytest.mark.parametrize("continue_final", [False, True])
def test_tokenizer_template_renders_as_hf(tokenizer, continue_final):
    conv = CONV if continue_final else CONV[:2]
    kw = dict(add_generation_prompt=not continue_final, continue_final_message=continue_final)
    trusted = apply_chat_template(tokenizer, conv, chat_template=tokenizer.chat_template, trusted=True, **kw)
    sandboxed = apply_chat_template(tokenizer, conv, chat_template=tokenizer.chat_template, trusted=False, **kw)
    assert sandboxed == trusted
    assert tokenizer.decode(sandboxed).endswith("Hi! How" if continue_final else "<|im_start|>assistant\n")


def test_template_features_hf_templates_use(tokenizer):
    template = ("{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}"
                "{{ m['role'] ~ ':' ~ m['content'] | tojson }}{% generation %}|{% endgeneration %}{% endfor %}"
                "{{ ns.n }}{{ bos_token }}{% if tools %}{{ tools | tojson(indent=None) }}{% endif %}")
    text = render_untrusted_template(template, CONV[:2], add_generation_prompt=True, tools=[{"name": "f"}],
                                     bos_token="<s>")
    assert text == 'system:"Be brief."|user:"Hello there"|2<s>[{"name": "f"}]'


@pytest.mark.parametrize("template,fragment", [
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "took longer than"),
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% for k in range(100000) %}{% endfor %}"
     "{% endfor %}{% endfor %}", "took longer than"),
    ("{% set s = 'x' * 400000000 %}{{ s }}", "over the limit"),
    ("{% set s = 400000000 * 'x' %}", "over the limit"),
    ("{% set l = [1] * 400000000 %}", "over the limit"),
    ("{% set s = 'x' * 4000000 %}{% set t = s ~ s %}", "over the limit"),
    ("{% set s = 'x' * 4000000 %}{% set t = s + s %}", "over the limit"),
    ("{{ 'x' | center(400000000) }}", "over the limit"),
    ("{{ 'x'.ljust(400000000) }}", "over the limit"),
    ("{{ '%0400000000d' % 1 }}", "format width"),
    ("{{ '{:>400000000}'.format(1) }}", "format width"),
    ("{{ '%0400000000d' | format(1) }}", "format width"),
    ("{{ 10 ** 100000000 }}", "power"),
    ("{% for i in range(100000) %}{{ 'abcdefghij' * 100 }}{% endfor %}", "output is longer"),
    ("{{ messages.__class__.__mro__ }}", "failed"),
    ("{{ ''.__class__.__subclasses__() }}", "failed"),
    ("{{ raise_exception('no tools') }}", "no tools"),
    ("{% for m in messages %}", "syntax error"),
    ("{{ 1 / 0 }}", "ZeroDivisionError"),
])
def test_hostile_templates_fail_fast(template, fragment):
    start = time.monotonic()
    with pytest.raises(ChatTemplateError, match=fragment):
        render(template, time_limit_s=0.5)
    assert time.monotonic() - start < 2.0


def test_timeout_does_not_leak_into_the_thread():
    """After a timed-out render, the same thread goes on working (no exception arrives later)."""
    with pytest.raises(ChatTemplateError):
        render("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", time_limit_s=0.2)
    assert render("{{ messages[1]['content'] }}", time_limit_s=0.2) == "Hello there"
    total = 0
    for i in range(2_000_000):      # ~0.3 s of pure Python after the limit would have passed
        total += i
    assert total == sum(range(2_000_000))


def test_limits_apply_in_any_thread():
    errors: list[str] = []

    def work():
        try:
            render("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
                   time_limit_s=0.3)
        except ChatTemplateError as e:
            errors.append(str(e))

    t = threading.Thread(target=work)
    t.start()
    t.join(5)
    assert not t.is_alive() and errors == ["The chat template took longer than 0.3 s to render."]
