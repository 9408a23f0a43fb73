// Picking an image from the library, the camera or the file system, as one LocalFile shape.
import * as DocumentPicker from 'expo-document-picker';
import * as ImagePicker from 'expo-image-picker';
import { Platform } from 'react-native';

import type { LocalFile } from '../api/client';

export type Source = 'library' | 'camera' | 'file';

/** The picked file, or null when the user cancelled. Throws 'camera' when no camera can be used. */
export async function pick(source: Source): Promise<LocalFile | null> {
  if (source === 'file') {
    const res = await DocumentPicker.getDocumentAsync({ type: ['image/png', 'image/jpeg'], copyToCacheDirectory: true, multiple: false });
    const asset = res.canceled ? null : res.assets[0];
    if (!asset) return null;
    return { name: asset.name, type: asset.mimeType ?? '', size: asset.size ?? asset.file?.size ?? 0, uri: asset.uri, blob: asset.file };
  }
  if (source === 'camera' && Platform.OS !== 'web') {
    const permission = await ImagePicker.requestCameraPermissionsAsync();
    if (!permission.granted) throw new Error('camera');
  }
  const options: ImagePicker.ImagePickerOptions = { mediaTypes: ['images'], quality: 1, exif: false };
  const res = source === 'camera' ? await ImagePicker.launchCameraAsync(options) : await ImagePicker.launchImageLibraryAsync(options);
  const asset = res.canceled ? null : res.assets[0];
  if (!asset) return null;
  return {
    name: asset.fileName ?? (asset.mimeType === 'image/png' ? 'image.png' : 'image.jpg'),
    type: asset.mimeType ?? '',
    size: asset.fileSize ?? asset.file?.size ?? 0,
    uri: asset.uri,
    blob: asset.file,
  };
}

/** The first bytes of the file, to tell its real type (web only: on phones the picker's type is trusted). */
export async function head(file: LocalFile): Promise<Uint8Array | null> {
  if (!file.blob) return null;
  return new Uint8Array(await file.blob.slice(0, 16).arrayBuffer());
}
