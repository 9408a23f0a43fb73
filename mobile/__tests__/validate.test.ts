import { checkUpload, sniff } from '../src/upload/validate';

const PNG = Uint8Array.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0, 0]);
const JPEG = Uint8Array.from([0xff, 0xd8, 0xff, 0xe0, 0, 0]);
const GIF = Uint8Array.from([0x47, 0x49, 0x46, 0x38, 0x39, 0x61]);

test('the type comes from the bytes, not the name', () => {
  expect(sniff(PNG)).toBe('image/png');
  expect(sniff(JPEG)).toBe('image/jpeg');
  expect(sniff(GIF)).toBeNull();
  expect(checkUpload({ name: 'scan.png', type: 'image/png', size: 100 }, GIF)).toEqual({ kind: 'notAnImage' });
  expect(checkUpload({ name: 'scan.gif', type: 'image/gif', size: 100 }, PNG)).toBeNull();
});

test('without the bytes (phones) the picker type decides', () => {
  expect(checkUpload({ name: 'a.jpg', type: 'image/jpeg', size: 100 }, null)).toBeNull();
  expect(checkUpload({ name: 'a.heic', type: 'image/heic', size: 100 }, null)).toEqual({ kind: 'notAnImage' });
});

test('size: empty and over the limit are refused with the limit in MB', () => {
  expect(checkUpload({ name: 'a.png', type: 'image/png', size: 0 }, PNG)).toEqual({ kind: 'empty' });
  expect(checkUpload({ name: 'a.png', type: 'image/png', size: 10 * 1024 * 1024 }, PNG)).toBeNull();
  expect(checkUpload({ name: 'a.png', type: 'image/png', size: 10 * 1024 * 1024 + 1 }, PNG)).toEqual({ kind: 'tooLarge', maxMb: 10 });
  expect(checkUpload({ name: 'a.png', type: 'image/png', size: 3 * 1024 * 1024 }, PNG, 2 * 1024 * 1024)).toEqual({ kind: 'tooLarge', maxMb: 2 });
});
