// adapt's browser predictor: the exported model (or an adapter bundle) with onnxruntime-web,
// and the same pre- and post-processing as predict.py, written again in JavaScript:
//   text:   tokenizer.json's BERT WordPiece (BertNormalizer, BertPreTokenizer, WordPiece,
//           TemplateProcessing), truncated to max_length as the tokenizers library does;
//   images: Pillow's resize (its fixed-point bilinear / bicubic / lanczos resampling), the
//           centre crop, /255 and mean/std in float32, as numpy does them;
//   after:  softmax-top-k, sigmoid-threshold, token-tags.
// manifest.json (written by adapt) names the model, each task's preprocessing, its adapter and
// the test examples with the outputs ONNX Runtime gave in Python; the page runs them all and
// writes {"examples", "max_abs_diff", "label_agreement"} into the element #adapt-outputs.
import * as ort from './ort/ort.wasm.min.mjs';

ort.env.wasm.wasmPaths = new URL('./ort/', import.meta.url).href;
ort.env.wasm.numThreads = 1; // threads need cross-origin isolation, which a plain static server lacks

// ---------------------------------------------------------------- text: BERT WordPiece
const PUNCTUATION = /[!-\/:-@\[-`{-~]|\p{P}/u;
const OTHER = /\p{C}/u; // Cc, Cf, Cs, Co, Cn: what BertNormalizer's clean_text drops
const MARK = /\p{Mn}/u;
// Rust's char::is_whitespace (Unicode White_Space), which the tokenizers library splits on
const WHITESPACE = /[\t\n\v\f\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]/u;
// Python's str.split(): White_Space and the information separators \x1c-\x1f
const PYTHON_SPACES = /[\t\n\v\f\r \x1c-\x1f\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+/u;

// predict.py's source.split(): the words of a sentence to tag
export function splitWords(text) {
  return text.split(PYTHON_SPACES).filter((w) => w);
}

function isChinese(code) {
  return (code >= 0x4e00 && code <= 0x9fff) || (code >= 0x3400 && code <= 0x4dbf) ||
    (code >= 0x20000 && code <= 0x2a6df) || (code >= 0x2a700 && code <= 0x2b73f) ||
    (code >= 0x2b740 && code <= 0x2b81f) || (code >= 0x2b820 && code <= 0x2ceaf) ||
    (code >= 0xf900 && code <= 0xfaff) || (code >= 0x2f800 && code <= 0x2fa1f);
}

export class WordPiece {
  constructor(json, maxLength) {
    const need = (part, type) => {
      if (!part || part.type !== type) {
        throw new Error(`tokenizer.json's ${type.replace(/[A-Z]/g, (c) => ' ' + c).trim().toLowerCase()} ` +
          `is ${part ? part.type : 'missing'}: the page reads BERT WordPiece tokenizers only (use predict.py)`);
      }
    };
    need(json.normalizer, 'BertNormalizer');
    need(json.pre_tokenizer, 'BertPreTokenizer');
    need(json.model, 'WordPiece');
    need(json.post_processor, 'TemplateProcessing');
    this.normalizer = json.normalizer;
    this.vocab = new Map(Object.entries(json.model.vocab));
    this.unk = this.vocab.get(json.model.unk_token);
    this.prefix = json.model.continuing_subword_prefix;
    this.maxChars = json.model.max_input_chars_per_word;
    this.template = json.post_processor.single;
    this.special = json.post_processor.special_tokens;
    this.maxLength = maxLength;
  }

  normalize(text) {
    const n = this.normalizer;
    let chars = [...text];
    if (n.clean_text) {
      chars = chars.filter((c) => c !== '\0' && c !== '\ufffd' && !(OTHER.test(c) && !'\t\n\r'.includes(c)))
        .map((c) => (WHITESPACE.test(c) ? ' ' : c));
    }
    if (n.handle_chinese_chars) chars = chars.flatMap((c) => (isChinese(c.codePointAt(0)) ? [' ', c, ' '] : [c]));
    let out = chars.join('');
    const strip = n.strip_accents === null || n.strip_accents === undefined ? n.lowercase : n.strip_accents;
    if (strip) out = [...out.normalize('NFD')].filter((c) => !MARK.test(c)).join('');
    if (n.lowercase) out = out.toLowerCase();
    return out;
  }

  preTokenize(text) {
    const words = [];
    let current = '';
    for (const c of text) {
      if (WHITESPACE.test(c)) {
        if (current) words.push(current);
        current = '';
      } else if (PUNCTUATION.test(c)) {
        if (current) words.push(current);
        words.push(c);
        current = '';
      } else {
        current += c;
      }
    }
    if (current) words.push(current);
    return words;
  }

  wordPiece(word) {
    const chars = [...word];
    if (chars.length > this.maxChars) return [this.unk];
    const ids = [];
    for (let start = 0; start < chars.length;) {
      let end = chars.length;
      let found = null;
      while (start < end) {
        const piece = (start > 0 ? this.prefix : '') + chars.slice(start, end).join('');
        if (this.vocab.has(piece)) {
          found = this.vocab.get(piece);
          break;
        }
        end -= 1;
      }
      if (found === null) return [this.unk];
      ids.push(found);
      start = end;
    }
    return ids;
  }

  // ids and word index of each token of one text, or of pre-split words (token classification)
  encode(textOrWords) {
    const words = Array.isArray(textOrWords) ? textOrWords : [textOrWords];
    let ids = [];
    let wordIds = [];
    words.forEach((word, index) => {
      for (const piece of this.preTokenize(this.normalize(word))) {
        const pieces = this.wordPiece(piece);
        ids = ids.concat(pieces);
        wordIds = wordIds.concat(pieces.map(() => (Array.isArray(textOrWords) ? index : 0)));
      }
    });
    const added = this.template.filter((t) => t.SpecialToken).reduce((n, t) => n + this.special[t.SpecialToken.id].ids.length, 0);
    const room = Math.max(0, this.maxLength - added);
    ids = ids.slice(0, room);
    wordIds = wordIds.slice(0, room);
    const out = { ids: [], types: [], words: [] };
    for (const part of this.template) {
      if (part.SpecialToken) {
        for (const id of this.special[part.SpecialToken.id].ids) {
          out.ids.push(id);
          out.types.push(part.SpecialToken.type_id);
          out.words.push(null);
        }
      } else {
        out.ids.push(...ids);
        out.types.push(...ids.map(() => part.Sequence.type_id));
        out.words.push(...wordIds);
      }
    }
    return out;
  }
}

// ---------------------------------------------------------------- images: Pillow's resize
const PRECISION_BITS = 32 - 8 - 2;
const FILTERS = {
  bilinear: { support: 1.0, f: (x) => { x = Math.abs(x); return x < 1.0 ? 1.0 - x : 0.0; } },
  bicubic: {
    support: 2.0,
    f: (x) => {
      const a = -0.5;
      x = Math.abs(x);
      if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
      if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
      return 0.0;
    },
  },
  lanczos: {
    support: 3.0,
    f: (x) => {
      const sinc = (v) => (v === 0.0 ? 1.0 : Math.sin(Math.PI * v) / (Math.PI * v));
      return x >= -3.0 && x < 3.0 ? sinc(x) * sinc(x / 3.0) : 0.0;
    },
  },
};

// Pillow's precompute_coeffs and normalize_coeffs_8bpc: per output pixel, its first input
// pixel, how many it reads and their fixed-point weights
function coefficients(inSize, outSize, filter) {
  const scale = inSize / outSize;
  const filterScale = Math.max(scale, 1.0);
  const support = filter.support * filterScale;
  const taps = [];
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const ss = 1.0 / filterScale;
    const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
    const xmax = Math.min(Math.trunc(center + support + 0.5), inSize) - xmin;
    const k = [];
    let ww = 0.0;
    for (let x = 0; x < xmax; x++) {
      const w = filter.f((x + xmin - center + 0.5) * ss);
      k.push(w);
      ww += w;
    }
    const fixed = k.map((w) => {
      const v = ww !== 0.0 ? w / ww : w;
      return v < 0 ? Math.trunc(-0.5 + v * (1 << PRECISION_BITS)) : Math.trunc(0.5 + v * (1 << PRECISION_BITS));
    });
    taps.push({ xmin, k: fixed });
  }
  return taps;
}

function clip8(sum) {
  const v = Math.floor(sum / (1 << PRECISION_BITS));
  return v < 0 ? 0 : v > 255 ? 255 : v;
}

// one pass of Pillow's ImagingResample over RGB pixels (3 per pixel, row-major)
function resamplePass(pixels, width, height, outSize, horizontal, filter) {
  const taps = coefficients(horizontal ? width : height, outSize, filter);
  const outW = horizontal ? outSize : width;
  const outH = horizontal ? height : outSize;
  const out = new Uint8Array(outW * outH * 3);
  for (let y = 0; y < outH; y++) {
    for (let x = 0; x < outW; x++) {
      const tap = taps[horizontal ? x : y];
      for (let c = 0; c < 3; c++) {
        let sum = 1 << (PRECISION_BITS - 1);
        for (let i = 0; i < tap.k.length; i++) {
          const at = horizontal ? (y * width + tap.xmin + i) : ((tap.xmin + i) * width + x);
          sum += pixels[at * 3 + c] * tap.k[i];
        }
        out[(y * outW + x) * 3 + c] = clip8(sum);
      }
    }
  }
  return out;
}

export function resize(pixels, width, height, outW, outH, interpolation) {
  const filter = FILTERS[interpolation];
  if (!filter) throw new Error(`interpolation ${interpolation} is not one the page reproduces (use predict.py)`);
  let data = pixels;
  if (outW !== width) data = resamplePass(data, width, height, outW, true, filter);
  if (outH !== height) data = resamplePass(data, outW, height, outH, false, filter);
  return data;
}

export async function readPixels(url) {
  const blob = await (await fetch(url)).blob();
  const bitmap = await createImageBitmap(blob, { colorSpaceConversion: 'none', premultiplyAlpha: 'none' });
  const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
  const context = canvas.getContext('2d');
  context.drawImage(bitmap, 0, 0);
  const rgba = context.getImageData(0, 0, bitmap.width, bitmap.height).data;
  const rgb = new Uint8Array(bitmap.width * bitmap.height * 3);
  for (let i = 0; i < bitmap.width * bitmap.height; i++) {
    rgb[i * 3] = rgba[i * 4];
    rgb[i * 3 + 1] = rgba[i * 4 + 1];
    rgb[i * 3 + 2] = rgba[i * 4 + 2];
  }
  return { rgb, width: bitmap.width, height: bitmap.height };
}

// Python's round(): halves to even, as predict.py's int(round(...)) does
function pyRound(v) {
  const floor = Math.floor(v);
  if (v - floor === 0.5) return floor % 2 === 0 ? floor : floor + 1;
  return Math.round(v);
}

// predict.py's prepare_image: short side to size / crop_pct, centre crop, normalise, CHW
export async function prepareImage(url, spec) {
  const [, height, width] = spec.input_size;
  const scale = pyRound(height / (spec.crop_pct ?? 1.0));
  const image = await readPixels(url);
  const size = image.width <= image.height
    ? [scale, Math.max(1, pyRound(image.height * scale / image.width))]
    : [Math.max(1, pyRound(image.width * scale / image.height)), scale];
  const resized = resize(image.rgb, image.width, image.height, size[0], size[1], spec.interpolation ?? 'bicubic');
  const left = Math.floor((size[0] - width) / 2);
  const top = Math.floor((size[1] - height) / 2);
  const out = new Float32Array(3 * height * width);
  const mean = spec.mean.map(Math.fround);
  const std = spec.std.map(Math.fround);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      for (let c = 0; c < 3; c++) {
        const inside = y + top >= 0 && y + top < size[1] && x + left >= 0 && x + left < size[0];
        const value = inside ? resized[((y + top) * size[0] + x + left) * 3 + c] : 0;
        const scaled = Math.fround(value / 255.0);
        out[c * height * width + y * width + x] = Math.fround(Math.fround(scaled - mean[c]) / std[c]);
      }
    }
  }
  return new ort.Tensor('float32', out, [1, 3, height, width]);
}

// ---------------------------------------------------------------- the graph and after
function softmax(values) {
  const top = Math.max(...values);
  const exp = values.map((v) => Math.exp(v - top));
  const sum = exp.reduce((a, b) => a + b, 0);
  return exp.map((v) => v / sum);
}

function rows(tensor) {
  const dims = tensor.dims;
  const width = dims[dims.length - 1];
  const data = Array.from(tensor.data);
  const out = [];
  for (let i = 0; i < data.length; i += width) out.push(data.slice(i, i + width));
  return out;
}

function argmax(values) {
  return values.reduce((best, v, i) => (v > values[best] ? i : best), 0);
}

// predict.py's finish_row, for the kinds the page knows
export function finish(logits, spec, context) {
  const labels = spec.labels;
  const kind = spec.postprocess.kind;
  if (kind === 'softmax-top-k') {
    const probs = softmax(rows(logits)[0]);
    const best = argmax(probs);
    return { label: labels[best], score: probs[best], compare: labels[best] };
  }
  if (kind === 'sigmoid-threshold') {
    const threshold = spec.postprocess.threshold ?? 0.5;
    const probs = rows(logits)[0].map((v) => 1 / (1 + Math.exp(-v)));
    const chosen = probs.map((p, i) => [p, i]).filter(([p]) => p >= threshold).sort((a, b) => b[0] - a[0]).map(([, i]) => labels[i]);
    return { labels: chosen, compare: chosen };
  }
  if (kind === 'token-tags') {
    const perToken = rows(logits);
    const tags = context.first.map((position) => labels[argmax(perToken[position])]);
    return { tags: context.words.map((token, i) => ({ token, tag: tags[i] })).slice(0, tags.length), compare: tags };
  }
  throw new Error(`post-processing ${kind} is not one the page knows (use predict.py)`);
}

export class Task {
  static async load(name, entry, session, base) {
    const task = new Task();
    Object.assign(task, { name, entry, session, spec: entry.spec });
    if (entry.tokenizer) {
      const json = await (await fetch(new URL(entry.tokenizer, base))).json();
      task.tokenizer = new WordPiece(json, entry.spec.max_length);
    }
    task.adapter = entry.adapter ? await ort.LoraAdapter.create(new URL(entry.adapter, base).href) : null;
    return task;
  }

  async feed(input, base) {
    const kind = this.spec.kind;
    if (kind === 'image') return { feed: { [this.entry.inputs[0]]: await prepareImage(new URL(input, base).href, this.spec) }, context: {} };
    if (kind !== 'text' && kind !== 'tokens') throw new Error(`inputs of kind ${kind} are not ones the page prepares (use predict.py)`);
    const words = kind === 'tokens' ? splitWords(input) : null;
    const encoding = this.tokenizer.encode(words ?? input);
    const tensor = (values) => new ort.Tensor('int64', BigInt64Array.from(values.map(BigInt)), [1, values.length]);
    const all = { input_ids: tensor(encoding.ids), attention_mask: tensor(encoding.ids.map(() => 1)), token_type_ids: tensor(encoding.types) };
    const feed = Object.fromEntries(this.entry.inputs.map((n) => [n, all[n]]));
    const first = [];
    const seen = new Set();
    encoding.words.forEach((word, position) => {
      if (word !== null && !seen.has(word)) {
        seen.add(word);
        first.push(position);
      }
    });
    return { feed, context: { words: words ?? [], first } };
  }

  async predict(input, base) {
    const { feed, context } = await this.feed(input, base);
    const options = this.adapter ? { activeLoraAdapters: [this.adapter] } : {};
    const results = await this.session.run(feed, [this.entry.output], options);
    const logits = results[this.entry.output];
    return { logits, row: finish(logits, this.spec, context) };
  }
}

// every recorded example of every task, compared with what ONNX Runtime gave in Python
export async function checkExamples(tasks, manifest, base) {
  let examples = 0;
  let agree = 0;
  let maxDiff = 0;
  const perTask = {};
  for (const task of tasks) {
    let taskDiff = 0;
    let taskAgree = 0;
    const recorded = manifest.tasks[task.name].examples;
    for (const example of recorded) {
      const { logits, row } = await task.predict(example.input, base);
      const got = Array.from(logits.data);
      const want = example.logits.flat(Infinity);
      let diff = got.length === want.length ? 0 : Infinity;
      for (let i = 0; i < Math.min(got.length, want.length); i++) diff = Math.max(diff, Math.abs(got[i] - want[i]) || (Number.isFinite(got[i]) ? 0 : Infinity));
      taskDiff = Math.max(taskDiff, diff);
      if (JSON.stringify(row.compare) === JSON.stringify(example.label)) taskAgree += 1;
    }
    perTask[task.name] = { examples: recorded.length, max_abs_diff: taskDiff, label_agreement: recorded.length ? taskAgree / recorded.length : 1 };
    examples += recorded.length;
    agree += taskAgree;
    maxDiff = Math.max(maxDiff, taskDiff);
  }
  return { examples, max_abs_diff: maxDiff, label_agreement: examples ? agree / examples : 1, tasks: perTask };
}

export async function start(outputs) {
  const params = new URLSearchParams(location.search);
  const base = new URL('.', location.href);
  const manifest = await (await fetch(new URL('manifest.json', base))).json();
  const model = params.get('model') ?? manifest.model;
  let result;
  let tasks = [];
  try {
    const session = await ort.InferenceSession.create(new URL(model, base).href, { executionProviders: ['wasm'] });
    tasks = await Promise.all(Object.entries(manifest.tasks).map(([name, entry]) => Task.load(name, entry, session, base)));
    result = { model, runtime: `onnxruntime-web ${ort.env.versions?.web ?? ''}`, ...(await checkExamples(tasks, manifest, base)) };
  } catch (error) {
    result = { model, error: String(error && error.message ? error.message : error) };
  }
  outputs.textContent = JSON.stringify(result);
  if (params.get('report')) await fetch(new URL('adapt-web-result', location.origin), { method: 'POST', body: outputs.textContent });
  return { tasks, base };
}
