// shiftlab's shift explorer: move the input, watch a layer's output follow it (or not).
// Everything it draws is in the page (see shiftlab/probing/frames.py for the packing): it fetches nothing.
(function () {
  "use strict";

  var tables = JSON.parse(document.getElementById("shiftlab-colormaps").textContent);
  var MASKED = [217, 222, 231]; // pixels the probe does not compare: the report's line colour
  var PADDING = [245, 247, 251]; // cells of a whole output's grid that hold no value

  // The numbers as shiftlab.report.sections.format_number writes them (Python's "{:.4g}"), so that the page and the
  // report's tables agree digit for digit.
  function formatNumber(value, digits) {
    digits = digits || 4;
    if (value === null || value === undefined) return "-";
    if (typeof value === "boolean") return value ? "yes" : "no";
    if (Number.isNaN(value)) return "n/a";
    if (value === 0) return "0";
    if (!Number.isFinite(value)) return value > 0 ? "inf" : "-inf";
    var parts = value.toExponential(digits - 1).split("e");
    var exponent = parseInt(parts[1], 10);
    if (exponent < -4 || exponent >= digits) {
      var mantissa = parts[0].indexOf(".") >= 0 ? parts[0].replace(/0+$/, "").replace(/\.$/, "") : parts[0];
      var size = String(Math.abs(exponent));
      return mantissa + "e" + (exponent < 0 ? "-" : "+") + (size.length < 2 ? "0" + size : size);
    }
    var fixed = value.toFixed(Math.max(0, digits - 1 - exponent));
    return fixed.indexOf(".") >= 0 ? fixed.replace(/0+$/, "").replace(/\.$/, "") : fixed;
  }

  // shiftlab._format.ROUNDING_LEVEL: a non-zero error below it is float rounding, whose digits change from one
  // machine to the next; formatError writes it as format_error does ("< 1e-05").
  var ROUNDING_LEVEL = 1e-5;

  function formatError(value, digits) {
    if (typeof value === "number" && value !== 0 && Math.abs(value) < ROUNDING_LEVEL) {
      return "< " + formatNumber(ROUNDING_LEVEL);
    }
    return formatNumber(value, digits);
  }

  function formatPair(pair) {
    return "(" + formatNumber(pair[0]) + ", " + formatNumber(pair[1]) + ")";
  }

  function shiftWords(pair) {
    return "down " + formatNumber(pair[0]) + ", right " + formatNumber(pair[1]) + " pixels";
  }

  function base64Bytes(text) {
    var binary = atob(text);
    var bytes = new Uint8Array(binary.length);
    for (var index = 0; index < binary.length; index++) bytes[index] = binary.charCodeAt(index);
    return bytes;
  }

  function inflate(bytes) {
    if (typeof DecompressionStream === "undefined") {
      return Promise.reject(new Error("this browser has no DecompressionStream; open the report in a current browser"));
    }
    var stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
    return new Response(stream).arrayBuffer().then(function (buffer) { return new Uint8Array(buffer); });
  }

  // Undo the median edge detector's prediction (shiftlab/probing/frames.py: predict_plane), pixel by pixel.
  function restorePlane(residual, height, width) {
    var plane = new Uint8Array(height * width);
    for (var y = 0; y < height; y++) {
      for (var x = 0; x < width; x++) {
        var at = y * width + x;
        var a = x > 0 ? plane[at - 1] : 0;
        var b = y > 0 ? plane[at - width] : 0;
        var c = x > 0 && y > 0 ? plane[at - width - 1] : 0;
        var high = Math.max(a, b), low = Math.min(a, b);
        var guess = c >= high ? low : c <= low ? high : a + b - c;
        plane[at] = (residual[at] + guess) & 255;
      }
    }
    return plane;
  }

  // A frame moved by (oy, ox) whole pixels, down and right: around the torus, or with a zero fill
  // (shiftlab.probing.explore.move_map). `fill` marks where nothing moved in.
  function moveFrame(frame, height, width, oy, ox, circular, fill) {
    var out = new Int16Array(height * width);
    for (var y = 0; y < height; y++) {
      var sy = y - oy;
      if (circular) sy = ((sy % height) + height) % height;
      for (var x = 0; x < width; x++) {
        var sx = x - ox;
        if (circular) sx = ((sx % width) + width) % width;
        out[y * width + x] = sy >= 0 && sy < height && sx >= 0 && sx < width ? frame[sy * width + sx] : fill;
      }
    }
    return out;
  }

  function colour(table, index) {
    var at = Math.max(0, Math.min(255, Math.round(index))) * 3;
    return [table[at], table[at + 1], table[at + 2]];
  }

  // Draw `count` values through `paint(i) -> [r, g, b]` on a canvas of height x width pixels; a whole output (a row
  // of values) is laid out in reading order on a near-square grid.
  function paintCanvas(canvas, height, width, paint, whole) {
    var rows = height, columns = width;
    if (whole) {
      columns = Math.max(1, Math.ceil(Math.sqrt(width)));
      rows = Math.max(1, Math.ceil(width / columns));
    }
    canvas.width = columns;
    canvas.height = rows;
    var context = canvas.getContext("2d");
    var image = context.createImageData(columns, rows);
    var count = height * width;
    for (var cell = 0; cell < rows * columns; cell++) {
      var rgb = cell < count ? paint(cell) : PADDING;
      image.data[cell * 4] = rgb[0];
      image.data[cell * 4 + 1] = rgb[1];
      image.data[cell * 4 + 2] = rgb[2];
      image.data[cell * 4 + 3] = 255;
    }
    context.putImageData(image, 0, 0);
    canvas.closest(".explorer-panel").classList.toggle("wide", columns > 1.6 * rows);
    // Blocks when enlarged (every pixel is a value); smooth when shrunk, where dropping rows would alias the picture.
    var shown = canvas.clientWidth * (window.devicePixelRatio || 1);
    canvas.style.imageRendering = shown === 0 || columns <= shown ? "pixelated" : "auto";
  }

  function Explorer(root, payload) {
    this.root = root;
    this.payload = payload;
    this.cache = {};
    this.shift = 0;
    this.layer = 0;
    this.channel = 0;
    this.field = function (name) { return root.querySelector('[data-field="' + name + '"]'); };
    this.layerSelect = root.querySelector(".explorer-layer");
    this.channelSelect = root.querySelector(".explorer-channel");
    this.slider = root.querySelector(".explorer-slider");
    this.pad = root.querySelector(".explorer-pad");
    this.cells = []; // by shift index (the pad lays them out by dy and dx)
    var cells = this.cells;
    Array.prototype.forEach.call(root.querySelectorAll(".explorer-pad [data-shift]"), function (cell) {
      cells[Number(cell.getAttribute("data-shift"))] = cell;
    });
    this.canvases = {};
    var self = this;
    ["input", "shifted", "moved", "difference"].forEach(function (name) {
      self.canvases[name] = root.querySelector('canvas[data-panel="' + name + '"]');
    });
  }

  Explorer.prototype.formatNumber = formatNumber; // (the browser tests check both against format_number and
  Explorer.prototype.formatError = formatError; //  format_error)

  Explorer.prototype.start = function () {
    var self = this;
    return inflate(base64Bytes(this.payload.data)).then(function (blob) {
      self.blob = blob;
      var input = self.payload.input, plane = input.height * input.width;
      self.inputPlanes = [];
      for (var channel = 0; channel < input.channels; channel++) {
        var start = input.offset + channel * plane;
        self.inputPlanes.push(restorePlane(blob.subarray(start, start + plane), input.height, input.width));
      }
      self.bind();
      self.fillChannels();
      self.render();
      self.root.classList.add("ready");
      self.root.shiftlabExplorer = self; // for the browser test and for curious readers (the console)
      self.root.setAttribute("data-ready", "true");
    });
  };

  Explorer.prototype.bind = function () {
    var self = this;
    this.layerSelect.addEventListener("change", function () {
      self.layer = Number(self.layerSelect.value);
      self.channel = 0;
      self.fillChannels();
      self.render();
    });
    this.channelSelect.addEventListener("change", function () {
      self.channel = Number(self.channelSelect.value);
      self.render();
    });
    this.slider.addEventListener("input", function () { self.select(Number(self.slider.value), false); });
    this.cells.forEach(function (cell) {
      cell.addEventListener("click", function () { self.select(Number(cell.dataset.shift), true); });
    });
    if (this.pad) this.pad.addEventListener("keydown", function (event) { self.padKey(event); });
  };

  Explorer.prototype.padKey = function (event) {
    var grid = this.payload.grid;
    var shift = this.payload.shifts[this.shift];
    var row = grid.dy.indexOf(shift[0]), column = grid.dx.indexOf(shift[1]);
    var moves = { ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1] };
    if (event.key === "Home") { row = 0; column = 0; }
    else if (event.key === "End") { row = grid.dy.length - 1; column = grid.dx.length - 1; }
    else if (moves[event.key]) {
      row = Math.max(0, Math.min(grid.dy.length - 1, row + moves[event.key][0]));
      column = Math.max(0, Math.min(grid.dx.length - 1, column + moves[event.key][1]));
    } else return;
    event.preventDefault();
    this.select(grid.index[row][column], true);
  };

  Explorer.prototype.select = function (index, focusPad) {
    this.shift = index;
    this.slider.value = String(index);
    this.render();
    if (focusPad && this.cells[index]) this.cells[index].focus();
  };

  Explorer.prototype.fillChannels = function () {
    var layer = this.payload.layers[this.layer];
    var select = this.channelSelect;
    select.textContent = "";
    layer.channels.forEach(function (channel, position) {
      var option = document.createElement("option");
      option.value = String(position);
      if (layer.part === "whole") option.textContent = "all " + layer.shape.reduce(function (a, b) { return a * b; }, 1) + " values";
      else option.textContent = "channel " + channel.index + (position === 0 ? " (strongest)" : "") + " of " + layer.channelCount;
      select.appendChild(option);
    });
    select.disabled = layer.channels.length < 2;
    select.value = String(this.channel);
  };

  // The 8-bit frames of a layer's kept channel: the original, then one per shift (residuals from the moved original).
  Explorer.prototype.frames = function (layerIndex, channelIndex) {
    var key = layerIndex + ":" + channelIndex;
    if (this.cache[key]) return this.cache[key];
    var layer = this.payload.layers[layerIndex];
    var size = layer.height * layer.width;
    var start = layer.channels[channelIndex].offset;
    var original = restorePlane(this.blob.subarray(start, start + size), layer.height, layer.width);
    var shifted = [];
    for (var index = 0; index < layer.rows.length; index++) {
      var row = layer.rows[index];
      var predicted = layer.part === "whole" ? original
        : moveFrame(original, layer.height, layer.width, row.aligned_dy, row.aligned_dx, layer.circular, 0);
      var residual = this.blob.subarray(start + (1 + index) * size, start + (2 + index) * size);
      var frame = new Uint8Array(size);
      for (var pixel = 0; pixel < size; pixel++) frame[pixel] = (predicted[pixel] + residual[pixel]) & 255;
      shifted.push(frame);
    }
    var core = layer.core === null ? null : this.blob.subarray(layer.core, layer.core + size);
    this.cache = {}; // one layer and channel at a time: the page stays light
    this.cache[key] = { original: original, shifted: shifted, core: core };
    return this.cache[key];
  };

  // Which pixels the probe compares for this shift: where the shifted output and the moved original meet, each in
  // the border core (zero and crop modes); all of them otherwise.
  Explorer.prototype.compared = function (layer, frames, row) {
    var size = layer.height * layer.width;
    var mask = new Uint8Array(size);
    if (layer.part === "whole" || layer.circular) { mask.fill(1); return mask; }
    var core = frames.core;
    if (core === null) { core = new Uint8Array(size); core.fill(1); }
    var moved = moveFrame(core, layer.height, layer.width, row.aligned_dy, row.aligned_dx, false, 0);
    for (var pixel = 0; pixel < size; pixel++) mask[pixel] = core[pixel] && moved[pixel] ? 1 : 0;
    return mask;
  };

  Explorer.prototype.drawInput = function () {
    var input = this.payload.input, shift = this.payload.shifts[this.shift];
    var channels = input.channels, height = input.height, width = input.width;
    var mode = this.payload.mode, dy = shift[0], dx = shift[1], top = 0, left = 0;
    var outHeight = height, outWidth = width, planes = this.inputPlanes;
    if (input.perShift) { // fourier shifts: one stored frame per shift
      outHeight = height = input.perShift.height;
      outWidth = width = input.perShift.width;
      var start = input.perShift.offset + this.shift * channels * height * width, blob = this.blob;
      planes = [];
      for (var channel = 0; channel < channels; channel++) {
        planes.push(blob.subarray(start + channel * height * width, start + (channel + 1) * height * width));
      }
      mode = "frames"; dy = 0; dx = 0;
    } else if (mode === "crop") { // the window at margin - t of the stored image
      outHeight = height - 2 * input.margin[0];
      outWidth = width - 2 * input.margin[1];
      top = input.margin[0] - dy;
      left = input.margin[1] - dx;
    }
    paintCanvas(this.canvases.input, outHeight, outWidth, function (cell) {
      var y = Math.floor(cell / outWidth), x = cell % outWidth, sy, sx;
      if (mode === "crop") { sy = y + top; sx = x + left; }
      else if (mode === "circular") { sy = (((y - dy) % height) + height) % height; sx = (((x - dx) % width) + width) % width; }
      else { sy = y - dy; sx = x - dx; }
      if (sy < 0 || sy >= height || sx < 0 || sx >= width) return [0, 0, 0];
      var at = sy * width + sx, red = planes[0][at];
      return channels === 3 ? [red, planes[1][at], planes[2][at]] : [red, red, red];
    }, false);
    this.canvases.input.setAttribute("aria-label", "The input moved " + shiftWords(shift) + " (" + this.payload.mode + " shift)");
  };

  Explorer.prototype.render = function () {
    var payload = this.payload, layer = payload.layers[this.layer];
    var channel = layer.channels[this.channel], row = layer.rows[this.shift], mine = layer.image[this.shift];
    var frames = this.frames(this.layer, this.channel);
    var shifted = frames.shifted[this.shift];
    var whole = layer.part === "whole";
    var moved = whole ? frames.original
      : moveFrame(frames.original, layer.height, layer.width, row.aligned_dy, row.aligned_dx, layer.circular, -1);
    var mask = this.compared(layer, frames, row);
    var maps = tables.map, differences = tables.difference;
    var clip = channel.clip, step = (channel.hi - channel.lo) / 255;
    // Full colour in the difference at half the largest value the maps' colour scale shows.
    var top = Math.max(Math.abs(channel.lo), Math.abs(channel.lo + clip * step)) / 2 || 1;
    this.drawInput();
    paintCanvas(this.canvases.shifted, layer.height, layer.width, function (cell) {
      return colour(maps, (shifted[cell] * 255) / clip);
    }, whole);
    paintCanvas(this.canvases.moved, layer.height, layer.width, function (cell) {
      return moved[cell] < 0 || !mask[cell] ? MASKED : colour(maps, (moved[cell] * 255) / clip);
    }, whole);
    paintCanvas(this.canvases.difference, layer.height, layer.width, function (cell) {
      if (!mask[cell] || moved[cell] < 0) return MASKED;
      var value = (shifted[cell] - moved[cell]) * step;
      return colour(differences, 127.5 + (127.5 * value) / top);
    }, whole);
    this.describe(layer, channel, row, mine);
    this.paintPad(layer);
  };

  Explorer.prototype.describe = function (layer, channel, row, mine) {
    var payload = this.payload, shift = payload.shifts[this.shift];
    var whole = layer.part === "whole";
    var show = function (name, text, value) {
      var element = this.field(name);
      if (!element) return;
      element.textContent = text;
      if (value !== undefined) element.setAttribute("data-value", value === null ? "null" : String(value));
    }.bind(this);
    show("shift", formatPair(shift));
    show("layer", layer.label + " (" + layer.type + ", " + layer.layout + ")");
    if (whole) {
      show("stride", "none: compared as a whole");
      show("ratio", "not moved: invariance is expected of a whole output");
      show("alignment", "(0, 0)");
    } else {
      var stride = layer.stride[0] === layer.stride[1] ? String(layer.stride[0]) : layer.stride[0] + "x" + layer.stride[1];
      show("stride", stride);
      show("ratio", formatPair([row.feature_dy, row.feature_dx]) + (row.multiple ? ": a multiple of the stride"
        : ": not a multiple of the stride"));
      show("alignment", formatPair([row.aligned_dy, row.aligned_dx]) + (row.multiple ? " (t / s)"
        : " (the best whole-pixel move, chosen by the probe over all images)"));
    }
    show("rel_l2", formatError(row.rel_l2), row.rel_l2);
    show("image_rel_l2", formatError(mine.rel_l2), mine.rel_l2);
    show("valid_fraction", formatNumber(row.valid_fraction), row.valid_fraction);
    var top1 = row.top1_agreement !== null && row.top1_agreement !== undefined;
    show("top1_agreement", top1 ? formatNumber(row.top1_agreement) : "-", top1 ? row.top1_agreement : null);
    var top1Row = this.root.querySelector('[data-only="top1"]');
    if (top1Row) top1Row.hidden = !top1;
    show("note", row.note || "");
    var range = formatNumber(channel.lo) + " to " + formatNumber(channel.lo + channel.clip * (channel.hi - channel.lo) / 255);
    show("scale", range);
    var top = Math.max(Math.abs(channel.lo), Math.abs(channel.lo + channel.clip * (channel.hi - channel.lo) / 255)) / 2;
    show("difference-scale", "\u00b1" + formatNumber(top || 1));
    show("shift-value", formatPair(shift));
    this.slider.setAttribute("aria-valuetext", shiftWords(shift));
    this.root.querySelector(".explorer-summary").textContent = "Shift " + formatPair(shift) + ", " + layer.label +
      ": relative L2 error " + formatError(row.rel_l2) + (payload.images > 1 ? " over all " + payload.images + " images" : "");
    this.canvases.shifted.setAttribute("aria-label", "Output of " + layer.label + " for the moved input");
    this.canvases.moved.setAttribute("aria-label", whole ? "Output of " + layer.label + " for the original input"
      : "Output of " + layer.label + " for the original input, moved by " + formatPair([row.aligned_dy, row.aligned_dx]));
    this.canvases.difference.setAttribute("aria-label", "Difference of the two outputs; relative L2 error " + formatError(row.rel_l2));
  };

  Explorer.prototype.paintPad = function (layer) {
    if (!this.pad) return;
    var largest = 0;
    layer.rows.forEach(function (row) { if (row.rel_l2 !== null && row.rel_l2 > largest) largest = row.rel_l2; });
    var self = this;
    this.cells.forEach(function (cell, index) {
      var row = layer.rows[index];
      var value = row.rel_l2;
      // errors at rounding level are noise: a pad of them stays blank rather than stretching the noise to full scale
      var rgb = value === null ? MASKED : colour(tables.error, largest >= ROUNDING_LEVEL ? (255 * value) / largest : 0);
      cell.style.backgroundColor = "rgb(" + rgb.join(",") + ")";
      cell.classList.toggle("multiple", Boolean(row.multiple) && layer.part !== "whole");
      var current = index === self.shift;
      cell.setAttribute("aria-checked", current ? "true" : "false");
      cell.tabIndex = current ? 0 : -1;
      cell.setAttribute("aria-label", shiftWords(self.payload.shifts[index]) + ": relative L2 error " + formatError(value) +
        (row.multiple && layer.part !== "whole" ? ", a multiple of the stride" : ""));
    });
    this.field("pad-max").textContent = formatError(largest);
  };

  function startAll() {
    var roots = document.querySelectorAll(".explorer[data-payload]");
    Array.prototype.forEach.call(roots, function (root) {
      var payload = JSON.parse(document.getElementById(root.getAttribute("data-payload")).textContent);
      new Explorer(root, payload).start().catch(function (error) {
        var message = root.querySelector(".explorer-error");
        message.textContent = "The explorer could not start: " + error.message;
        message.hidden = false;
        root.setAttribute("data-ready", "failed");
      });
    });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", startAll);
  else startAll();
})();
