/* Zoom is part of the view: every figure's axis ranges live in the URL, so a copied link,
 * a bookmark or a share link reopens the figures zoomed as they were.
 *
 *   ?zoom=<graph id>_<axis>_<low>_<high>*<graph id>_<axis>_<low>_<high>...
 *
 * e.g. zoom=accuracy-graph_x_0.5_0.95*accuracy-graph_y_0.2_1 (axis "x", "y2", ...). Plotly
 * reports a zoom or pan as a relayout event; the ranges are written to the URL in place
 * (history.replaceState, no new history entry). A figure the server sends anew (a control
 * changed, a result landed, the page was opened from a link) gets the URL's ranges again once
 * drawn; a double-click that autoscales an axis removes it. Dash writes a page's other view
 * keys with history.pushState; the zoom is carried over when the page stays the same.
 */
(function () {
    "use strict";
    var KEY = "zoom";
    var AXIS = /^([xy])axis(\d*)\.(range(\[[01]\])?|autorange)$/;

    function parse(text) {
        var state = {};
        (text || "").split("*").forEach(function (entry) {
            var parts = entry.split("_");
            if (parts.length < 4) { return; }
            var high = Number(parts.pop()), low = Number(parts.pop()), axis = parts.pop();
            var graph = parts.join("_");
            if (!graph || !/^[xy]\d*$/.test(axis) || !isFinite(low) || !isFinite(high)
                || low === high) { return; }
            (state[graph] = state[graph] || {})[axis] = [low, high];
        });
        return state;
    }

    function format(state) {
        var entries = [];
        Object.keys(state).sort().forEach(function (graph) {
            Object.keys(state[graph]).sort().forEach(function (axis) {
                var r = state[graph][axis];
                entries.push([graph, axis, short(r[0]), short(r[1])].join("_"));
            });
        });
        return entries.join("*");
    }

    function short(value) {
        return String(Number(Number(value).toPrecision(6)));
    }

    function current() {
        return parse(new URLSearchParams(window.location.search).get(KEY));
    }

    function write(state) {
        var params = new URLSearchParams(window.location.search);
        var text = format(state);
        if (text) { params.set(KEY, text); } else { params.delete(KEY); }
        var query = params.toString();
        var url = window.location.pathname + (query ? "?" + query : "") + window.location.hash;
        if (url !== window.location.pathname + window.location.search + window.location.hash) {
            window.history.replaceState(window.history.state, "", url);
        }
    }

    function graphId(gd) {
        var holder = gd.parentElement && gd.parentElement.closest("[id]");
        var id = holder ? holder.id : "";
        return id && id.charAt(0) !== "{" && id.indexOf("*") < 0 ? id : null;
    }

    function onRelayout(gd, event) {
        var id = graphId(gd);
        if (!id || !event) { return; }
        var state = current(), graph = state[id] || {}, changed = false;
        Object.keys(event).forEach(function (key) {
            var m = AXIS.exec(key);
            if (!m) { return; }
            var axis = m[1] + m[2], name = m[1] + "axis" + m[2];
            var layout = gd.layout[name] || {};
            if (m[3] === "autorange") {
                if (event[key] && graph[axis]) { delete graph[axis]; changed = true; }
                return;
            }
            var range = layout.range;
            if (range && range.length === 2 && isFinite(Number(range[0]))
                && isFinite(Number(range[1]))) {
                graph[axis] = [Number(range[0]), Number(range[1])];
                changed = true;
            }
        });
        if (!changed) { return; }
        if (Object.keys(graph).length) { state[id] = graph; } else { delete state[id]; }
        write(state);
    }

    // A figure object not yet seen (Dash replaced it): give it the URL's ranges.
    function onAfterPlot(gd) {
        if (gd._prunescopeZoomed === gd.layout) { return; }
        gd._prunescopeZoomed = gd.layout;
        var id = graphId(gd), wanted = id && current()[id];
        if (!wanted || !window.Plotly) { return; }
        var update = {};
        Object.keys(wanted).forEach(function (axis) {
            var name = axis.charAt(0) + "axis" + axis.slice(1);
            if (gd._fullLayout && gd._fullLayout[name]) {
                update[name + ".range"] = wanted[axis].slice();
                update[name + ".autorange"] = false;
            }
        });
        if (Object.keys(update).length) {
            window.Plotly.relayout(gd, update);
            gd._prunescopeZoomed = gd.layout;
        }
    }

    function watch(gd) {
        if (gd._prunescopeWatched || typeof gd.on !== "function") { return; }
        gd._prunescopeWatched = true;
        gd.on("plotly_relayout", function (event) { onRelayout(gd, event); });
        gd.on("plotly_afterplot", function () { onAfterPlot(gd); });
        onAfterPlot(gd);
    }

    function scan() {
        document.querySelectorAll(".js-plotly-plot").forEach(watch);
    }

    // Dash's own URL writes (a control changed) keep the zoom of the page they stay on.
    var push = window.history.pushState;
    window.history.pushState = function (state, title, url) {
        try {
            var zoom = new URLSearchParams(window.location.search).get(KEY);
            if (zoom && url != null) {
                var next = new URL(String(url), window.location.href);
                if (next.pathname === window.location.pathname && !next.searchParams.has(KEY)) {
                    next.searchParams.set(KEY, zoom);
                    url = next.pathname + next.search + next.hash;
                }
            }
        } catch (err) { /* an unreadable address goes through unchanged */ }
        return push.call(window.history, state, title, url);
    };

    var pending = false;
    function scanSoon() {  // once per frame, however many nodes changed
        if (pending) { return; }
        pending = true;
        window.requestAnimationFrame(function () { pending = false; scan(); });
    }

    new MutationObserver(scanSoon).observe(document.documentElement, {childList: true, subtree: true});
    document.addEventListener("DOMContentLoaded", scan);
}());
