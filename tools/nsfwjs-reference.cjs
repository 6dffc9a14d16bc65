// nsfwjs-reference.cjs - reference class probabilities of the MobileNetV2
// shipped by the npm package nsfwjs 4.4.0, computed by the package itself
// (its TensorFlow.js, CPU backend), for tests/test_finetune_cnn.c: the
// checkpoint written by tools/import-tfjs must give the same probabilities
// within 1e-3.
//
// Usage: node tools/nsfwjs-reference.cjs NODE_MODULES_DIR > tests/fixtures/cnn/nsfwjs_reference.json
// where NODE_MODULES_DIR holds nsfwjs@4.4.0 (tools/fetch-models installs it).
//
// The sample images are synthetic and defined by integer formulas, so the
// C test rebuilds them bit for bit: pixel (y, x, c) of image k is
//   ((x * (k + 1) * 3 + y * (k + 2) * 5 + ((x * y) >> (k + 2)) + c * 85 + k * 41) % 256)
// and the model sees it divided by 255 (as nsfwjs's classify does), at
// 224 x 224, so no resize is involved.
"use strict";
const path = require("path");
const modules = path.resolve(process.argv[2] || "node_modules");
const tf = require(path.join(modules, "@tensorflow/tfjs"));
const nsfwjs = require(path.join(modules, "nsfwjs"));

// nsfwjs announces the model it loads on stdout; keep stdout for the JSON.
console.log = console.info = (...args) => console.error(...args);

const SIZE = 224;
const IMAGES = 4;

function pixel(k, y, x, c) {
  return (x * (k + 1) * 3 + y * (k + 2) * 5 + ((x * y) >> (k + 2)) + c * 85 + k * 41) % 256;
}

async function main() {
  await tf.setBackend("cpu");
  const model = await nsfwjs.load("MobileNetV2");
  const out = { package: "nsfwjs@4.4.0", model: "MobileNetV2", size: SIZE,
                classes: ["Drawing", "Hentai", "Neutral", "Porn", "Sexy"],
                formula: "((x*(k+1)*3 + y*(k+2)*5 + ((x*y)>>(k+2)) + c*85 + k*41) % 256) / 255",
                probabilities: [] };
  for (let k = 0; k < IMAGES; k++) {
    const data = new Float32Array(SIZE * SIZE * 3);
    for (let y = 0; y < SIZE; y++)
      for (let x = 0; x < SIZE; x++)
        for (let c = 0; c < 3; c++) data[(y * SIZE + x) * 3 + c] = pixel(k, y, x, c) / 255;
    const input = tf.tensor4d(data, [1, SIZE, SIZE, 3]);
    const probs = await model.model.predict(input).data();
    out.probabilities.push(Array.from(probs));
    input.dispose();
  }
  process.stdout.write(JSON.stringify(out, null, 1) + "\n");
}

main().catch((e) => { console.error(e); process.exit(1); });
