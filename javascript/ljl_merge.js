// LoRA Merge tab: send the built <ljl:…> tag to a prompt, and refresh the Lora cards after a merge.
// Every global name starts with ljlMerge (all WebUI scripts share one namespace).

// Put `tag` into the txt2img or img2img prompt: a tag for the same file is replaced, otherwise the
// tag is appended; then the WebUI is told (updateInput) and its tab is shown.
function ljlMergeSendTag(tabname, tag) {
    if (!tag) {
        return;
    }
    var app = typeof gradioApp === "function" ? gradioApp() : document;
    var textarea = app.querySelector("#" + tabname + "_prompt textarea");
    if (!textarea) {
        return;
    }
    var name = ljlMergeTagName(tag);
    var text = textarea.value || "";
    var replaced = false;
    if (name) {
        var pattern = new RegExp("<ljl:" + ljlMergeEscapeRegExp(name) + "(:[^>]*)?>");
        if (pattern.test(text)) {
            text = text.replace(pattern, function() { return tag; });  // no `$&`-style patterns in tag
            replaced = true;
        }
    }
    if (!replaced) {
        var separator = " ";
        if (typeof opts === "object" && opts && typeof opts.extra_networks_add_text_separator === "string") {
            separator = opts.extra_networks_add_text_separator;
        }
        text = text.trim() ? text.replace(/\s+$/, "") + separator + tag : tag;
    }
    textarea.value = text;
    if (typeof updateInput === "function") {
        updateInput(textarea);
    } else {
        textarea.dispatchEvent(new Event("input", {bubbles: true}));
    }
    var switchTab = window["switch_to_" + tabname];
    if (typeof switchTab === "function") {
        switchTab();
    }
}

// The file name inside "<ljl:NAME:…>".
function ljlMergeTagName(tag) {
    var match = /^<ljl:([^:>]+)/.exec(tag);
    return match ? match[1] : null;
}

function ljlMergeEscapeRegExp(text) {
    return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

// After a file is written: ask the txt2img and img2img Lora card pages to reload their cards.
function ljlMergeRefreshCards() {
    var app = typeof gradioApp === "function" ? gradioApp() : document;
    ["txt2img", "img2img"].forEach(function(tabname) {
        var button = app.querySelector("#" + tabname + "_lora_extra_refresh");
        if (button) {
            button.click();
        }
    });
}
