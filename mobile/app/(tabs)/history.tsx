// Module 3: the user's analyses, newest first, pull to refresh, paged through the server's cursor.
import { useFocusEffect, useRouter } from 'expo-router';
import { useCallback, useEffect, useState } from 'react';
import { FlatList, Image, Pressable, RefreshControl, StyleSheet, Text, View } from 'react-native';

import type { AnalysisSummary } from '../../src/api/client';
import { Body, Button, Message, Notice } from '../../src/components/ui';
import { errorMessage, useI18n } from '../../src/i18n';
import { useSession } from '../../src/session/SessionContext';
import { usePalette } from '../../src/theme';

function Thumbnail({ imageId }: { imageId: string }) {
  const { client } = useSession();
  const [uri, setUri] = useState<string | null>(null);
  useEffect(() => {
    client.imageUri(imageId).then(setUri, () => setUri(null));
  }, [client, imageId]);
  return uri ? <Image source={{ uri }} style={styles.thumb} resizeMode="cover" /> : <View style={[styles.thumb, styles.blank]} />;
}

export default function History() {
  const { t, language } = useI18n();
  const palette = usePalette();
  const router = useRouter();
  const { client, handleError } = useSession();
  const [items, setItems] = useState<AnalysisSummary[]>([]);
  const [cursor, setCursor] = useState<string | null>(null);
  const [loaded, setLoaded] = useState(false);
  const [refreshing, setRefreshing] = useState(false);
  const [error, setError] = useState<string | null>(null);

  const load = useCallback(
    async (from: string | null) => {
      try {
        const page = await client.history(from);
        setItems((prev) => (from ? [...prev, ...page.items] : page.items));
        setCursor(page.next_cursor);
        setError(null);
      } catch (err) {
        handleError(err);
        setError(errorMessage(t, err));
      } finally {
        setLoaded(true);
      }
    },
    [client, handleError, t],
  );

  useFocusEffect(
    useCallback(() => {
      void load(null);
    }, [load]),
  );

  const refresh = async () => {
    setRefreshing(true);
    await load(null);
    setRefreshing(false);
  };

  return (
    <FlatList
      style={{ backgroundColor: palette.background }}
      contentContainerStyle={styles.list}
      data={items}
      keyExtractor={(item) => item.id}
      refreshControl={<RefreshControl refreshing={refreshing} onRefresh={refresh} />}
      onEndReachedThreshold={0.3}
      onEndReached={() => cursor && load(cursor)}
      ListHeaderComponent={<View style={styles.gap}><Message text={error} testID="history-error" /><Notice /></View>}
      ListEmptyComponent={loaded ? <Body muted testID="history-empty">{t('history.empty')}</Body> : null}
      ListFooterComponent={
        items.length ? (cursor ? <Button variant="secondary" label={t('history.more')} onPress={() => load(cursor)} testID="history-more" />
          : <Body muted>{t('history.end')}</Body>) : null
      }
      renderItem={({ item }) => {
        const malignant = item.label === 'malignant';
        return (
          <Pressable
            accessibilityRole="button"
            accessibilityLabel={`${t(malignant ? 'result.malignant' : 'result.benign')} ${item.p_malignant.toFixed(2)}, ${item.modality}, ${new Date(item.created).toLocaleString(language)}`}
            onPress={() => router.push({ pathname: '/analysis/[id]', params: { id: item.id } })}
            testID="history-item"
            style={[styles.item, { backgroundColor: palette.card, borderColor: palette.border }]}
          >
            <Thumbnail imageId={item.image_id} />
            <View style={styles.itemText}>
              <Text style={[styles.label, { color: malignant ? palette.malignant : palette.benign }]}>
                {`${t(malignant ? 'result.malignant' : 'result.benign')} · ${item.p_malignant.toFixed(2)}`}
              </Text>
              <Text style={{ color: palette.muted }}>{`${item.modality.toUpperCase()} · ${new Date(item.created).toLocaleString(language)}`}</Text>
            </View>
          </Pressable>
        );
      }}
    />
  );
}

const styles = StyleSheet.create({
  list: { padding: 16, gap: 10, width: '100%', maxWidth: 880, alignSelf: 'center' },
  gap: { gap: 10 },
  item: { flexDirection: 'row', gap: 12, padding: 10, borderRadius: 12, borderWidth: StyleSheet.hairlineWidth, alignItems: 'center' },
  thumb: { width: 64, height: 64, borderRadius: 6 },
  blank: { backgroundColor: '#333' },
  itemText: { flex: 1, gap: 4 },
  label: { fontSize: 17, fontWeight: '700' },
});
