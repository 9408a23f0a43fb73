import { emptyMask, maskArea, maskBox, maskFromRle, overlayUri, paintDisc } from '../src/image/mask';

test('COCO RLE is column-major and starts with background', () => {
  // 3 rows x 4 columns; lesion at column 1 rows 1-2 and column 2 row 0
  const mask = maskFromRle([3, 4], [4, 2, 0, 1, 5]);
  const rows = [0, 1, 2].map((y) => Array.from(mask.data.subarray(y * 4, y * 4 + 4)));
  expect(rows).toEqual([
    [0, 0, 1, 0],
    [0, 1, 0, 0],
    [0, 1, 0, 0],
  ]);
  expect(maskBox(mask)).toEqual([1, 0, 3, 3]);
});

test('an RLE that does not cover the image is refused', () => {
  expect(() => maskFromRle([3, 4], [4, 2])).toThrow('expected 12');
});

test('the brush paints a disc and the overlay is a PNG data URI', () => {
  const mask = emptyMask(100, 80);
  expect(maskBox(mask)).toBeNull();
  paintDisc(mask, 50, 40, 10);
  expect(maskArea(mask)).toBeGreaterThan(300);
  expect(maskArea(mask)).toBeLessThan(330);
  expect(maskBox(mask)).toEqual([40, 30, 61, 51]);
  expect(overlayUri(mask, [255, 0, 0])).toMatch(/^data:image\/png;base64,iVBORw0KGgo/);
});
