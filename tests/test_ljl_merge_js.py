"""javascript/ljl_merge.js run by Node.js on a minimal stand-in page (the browser test in
test_ui_browser.py covers the real page); skipped where `node` is not installed."""
import json
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NODE = shutil.which("node") or shutil.which("nodejs")

HARNESS = """
const fs = require("fs");
const vm = require("vm");
const textareas = {txt2img: {value: ""}, img2img: {value: ""}};
const sandbox = {
  updated: [],
  document: {querySelector: (sel) => {
    const m = /^#(\\w+)_prompt textarea$/.exec(sel);
    return m ? textareas[m[1]] || null : null;
  }},
  Event: function (type) { this.type = type; },
};
sandbox.window = sandbox;
sandbox.updateInput = (t) => sandbox.updated.push(t);
vm.createContext(sandbox);
vm.runInContext(fs.readFileSync(process.argv[2], "utf8"), sandbox);
const cases = JSON.parse(process.argv[3]);
const out = cases.map(([before, tag]) => {
  textareas.txt2img.value = before;
  sandbox.ljlMergeSendTag("txt2img", tag);
  return textareas.txt2img.value;
});
process.stdout.write(JSON.stringify(out));
"""


def send_all(tmp_path, cases):
    script = tmp_path / "harness.js"
    script.write_text(HARNESS)
    done = subprocess.run([NODE, str(script), str(ROOT / "javascript" / "ljl_merge.js"), json.dumps(cases)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.skipif(NODE is None, reason="Node.js is not installed")
def test_replacing_a_tag_keeps_dollar_signs_literally(tmp_path):
    """String.replace reads `$&`, `$'`, `` $` `` and `$$` in a replacement string as patterns; a tag
    for a file whose name holds them must still go into the prompt exactly as built."""
    cases = [
        ["a <ljl:cash$&:1> b", "<ljl:cash$&:0,1>"],
        ["a <ljl:x$'y:1> b", "<ljl:x$'y:0.5>"],
        ["a <ljl:p$$q:1>", "<ljl:p$$q:2>"],
        ["a <ljl:m:1>", "<ljl:m:0,1:lbw=ALL>"],
        ["a cat", "<ljl:n$`:1>"],
    ]
    assert send_all(tmp_path, cases) == [
        "a <ljl:cash$&:0,1> b",
        "a <ljl:x$'y:0.5> b",
        "a <ljl:p$$q:2>",
        "a <ljl:m:0,1:lbw=ALL>",
        "a cat <ljl:n$`:1>",
    ]
