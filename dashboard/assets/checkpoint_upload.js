/* Resumable checkpoint uploads on the project page.
 *
 * tus-js-client (tus.min.js beside this file) sends the chosen file to /api/v1/uploads in
 * chunks straight from disk, so the browser never reads it whole; after a failed request it
 * asks the server for the offset and continues, and an upload interrupted by closing the page
 * resumes when the same file is chosen again. The outcome goes to the page's `upload-event`
 * store, whose Python callback turns the finished upload into a checkpoint.
 *
 * An upload is its creator's: one remembered by this browser for someone else (another
 * account signed in here) answers 404 when resumed, and tus-js-client then starts a new one.
 * The upload id sent to the callback is only a name; the callback checks project access and
 * ownership on the server before it uses the upload.
 */
(function () {
  "use strict";

  var ENDPOINT = "/api/v1/uploads";
  // Each request stays well below proxy and server body limits, and a failure costs at most
  // one chunk of resending.
  var CHUNK_BYTES = 16 * 1024 * 1024;
  // Long enough to outlast a server restart or a stalled request that still holds the upload.
  var RETRY_DELAYS = [0, 1000, 3000, 5000, 10000, 20000, 30000, 60000];
  var PROGRESS_EVERY_MS = 200;
  var PROGRESS_BOX_STYLE = { display: "flex", gap: "0.6rem", alignItems: "center", marginTop: "0.6rem" };

  var current = null;

  function setProps(id, props) {
    window.dash_clientside.set_props(id, props);
  }

  function report(event) {
    event.nonce = Date.now() + Math.random();
    setProps("upload-event", { data: event });
  }

  function showProgress(fraction, text) {
    setProps("upload-progress-box", { style: PROGRESS_BOX_STYLE });
    setProps("upload-progress", { value: Math.round(1000 * fraction) / 10 });
    setProps("upload-progress-text", { children: text });
  }

  function megabytes(bytes) {
    return (bytes / 1e6).toFixed(bytes < 1e7 ? 1 : 0);
  }

  function describe(error) {
    var response = error && error.originalResponse;
    if (response) {
      try {
        var detail = JSON.parse(response.getBody()).detail;
        if (detail) return typeof detail === "string" ? detail : JSON.stringify(detail);
      } catch (ignored) {
        /* not a JSON error body: fall back to the client's message */
      }
    }
    return (error && error.message) || String(error);
  }

  function start(file) {
    if (current) {
      current.abort(true);
    }
    setProps("upload-message", { children: "" });
    var began = performance.now();
    var firstSent = null;
    var lastShown = 0;
    var upload = new window.tus.Upload(file, {
      endpoint: window.location.origin + ENDPOINT,
      chunkSize: CHUNK_BYTES,
      retryDelays: RETRY_DELAYS,
      removeFingerprintOnSuccess: true,
      metadata: { filename: file.name, filetype: file.type || "application/octet-stream" },
      onProgress: function (sent, total) {
        var now = performance.now();
        if (firstSent === null) firstSent = sent;
        if (now - lastShown < PROGRESS_EVERY_MS && sent < total) return;
        lastShown = now;
        var seconds = Math.max((now - began) / 1000, 1e-3);
        var rate = (sent - firstSent) / 1e6 / seconds;
        showProgress(
          total ? sent / total : 1,
          Math.floor((100 * sent) / Math.max(total, 1)) + " % · " + megabytes(sent) + " of " +
            megabytes(total) + " MB · " + rate.toFixed(1) + " MB/s"
        );
      },
      onError: function (error) {
        if (current !== upload) return;
        current = null;
        setProps("upload-cancel", { style: { display: "none" } });
        report({ error: describe(error), filename: file.name });
      },
      onSuccess: function () {
        if (current !== upload) return;
        current = null;
        var seconds = Math.max((performance.now() - began) / 1000, 1e-3);
        showProgress(1, "100 % · " + megabytes(file.size) + " MB in " + seconds.toFixed(1) + " s");
        setProps("upload-cancel", { style: { display: "none" } });
        setProps("upload-message", { children: "checking the checkpoint…" });
        report({ upload_id: upload.url.split("/").pop(), filename: file.name });
      },
    });
    current = upload;
    showProgress(0, "0 % · starting…");
    setProps("upload-cancel", { style: { display: "inline-block" } });
    upload.findPreviousUploads().then(function (previous) {
      if (previous.length) upload.resumeFromPreviousUpload(previous[0]);
      upload.start();
    });
  }

  function cancel() {
    if (!current) return;
    var upload = current;
    current = null;
    upload.abort(true); // also deletes the partial upload on the server
    setProps("upload-cancel", { style: { display: "none" } });
    showProgress(0, "cancelled");
  }

  // Dash has no file input component that leaves the file alone, so the drop zone's slot
  // gets a plain one whenever the page renders it.
  function ensureFileInput() {
    var slot = document.getElementById("checkpoint-upload-input");
    if (!slot || slot.querySelector("input[type=file]")) return;
    var input = document.createElement("input");
    input.type = "file";
    input.id = "checkpoint-file";
    input.style.display = "none";
    slot.appendChild(input);
  }

  new MutationObserver(ensureFileInput).observe(document.documentElement, {
    childList: true,
    subtree: true,
  });

  document.addEventListener("change", function (event) {
    var input = event.target;
    if (input.id !== "checkpoint-file" || !input.files.length) return;
    start(input.files[0]);
    input.value = ""; // choosing the same file again is a new upload
  });

  document.addEventListener("click", function (event) {
    if (event.target.closest && event.target.closest("#upload-cancel")) cancel();
  });

  function dropZone(event) {
    return event.target.closest && event.target.closest("#checkpoint-upload");
  }

  document.addEventListener("dragover", function (event) {
    if (!dropZone(event)) return;
    event.preventDefault();
    event.dataTransfer.dropEffect = "copy";
  });

  document.addEventListener("drop", function (event) {
    if (!dropZone(event) || !event.dataTransfer.files.length) return;
    event.preventDefault();
    start(event.dataTransfer.files[0]);
  });
})();
