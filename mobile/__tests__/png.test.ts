import { inflateSync } from 'zlib';

import { decodeBase64, encodeBase64 } from '../src/image/base64';
import { encodePng } from '../src/image/png';

function chunks(png: Uint8Array) {
  const out: { type: string; data: Buffer }[] = [];
  const buf = Buffer.from(png);
  for (let o = 8; o < buf.length; ) {
    const len = buf.readUInt32BE(o);
    out.push({ type: buf.toString('latin1', o + 4, o + 8), data: buf.subarray(o + 8, o + 8 + len) });
    o += 12 + len;
  }
  return out;
}

test('a gray PNG holds the pixels row by row behind filter bytes', () => {
  const pixels = Uint8Array.from({ length: 300 * 250 }, (_, i) => (i * 7) % 256);
  const png = encodePng(300, 250, pixels, 'gray');
  expect(Array.from(png.subarray(0, 8))).toEqual([137, 80, 78, 71, 13, 10, 26, 10]);
  const parts = chunks(png);
  expect(parts.map((c) => c.type)).toEqual(['IHDR', 'IDAT', 'IEND']);
  const ihdr = parts[0]!.data;
  expect([ihdr.readUInt32BE(0), ihdr.readUInt32BE(4), ihdr[8], ihdr[9]]).toEqual([300, 250, 8, 0]);
  const raw = inflateSync(parts[1]!.data); // zlib checks the Adler-32 too
  expect(raw.length).toBe(250 * 301);
  for (const y of [0, 124, 249]) {
    expect(raw[y * 301]).toBe(0);
    expect(Array.from(raw.subarray(y * 301 + 1, y * 301 + 301))).toEqual(Array.from(pixels.subarray(y * 300, y * 300 + 300)));
  }
});

test('an RGBA PNG larger than one deflate block still inflates', () => {
  const pixels = new Uint8Array(200 * 200 * 4).fill(9);
  const raw = inflateSync(chunks(encodePng(200, 200, pixels, 'rgba'))[1]!.data);
  expect(raw.length).toBe(200 * (200 * 4 + 1));
});

test('a pixel buffer of the wrong size is refused', () => {
  expect(() => encodePng(10, 10, new Uint8Array(99), 'gray')).toThrow('does not match');
});

test('base64 round-trips every length and matches Node', () => {
  for (const n of [0, 1, 2, 3, 4, 5, 1000, 10001]) {
    const bytes = Uint8Array.from({ length: n }, (_, i) => (i * 31 + 7) % 256);
    const text = encodeBase64(bytes);
    expect(text).toBe(Buffer.from(bytes).toString('base64'));
    expect(Array.from(decodeBase64(text))).toEqual(Array.from(bytes));
  }
});
