// The image at its aspect ratio with pinch-zoom and pan, the outline and the user's marks drawn over
// it, and drawing gestures in image pixels. Everything inside ignores touches, so each gesture's
// location is relative to the canvas itself on every platform.
import { useLayoutEffect, useRef, useState } from 'react';
import { Image, PanResponder, StyleSheet, Text, View, type GestureResponderEvent, type LayoutChangeEvent } from 'react-native';

import { useI18n } from '../i18n';
import type { Box } from '../roi/model';
import { usePalette } from '../theme';
import { Button, Row } from './ui';

export type DrawMode = 'drag' | 'tap' | 'paint' | 'pan';

export interface CanvasProps {
  uri: string;
  width: number;
  height: number;
  overlays?: string[];
  box?: Box | null;
  points?: { x: number; y: number; lesion: boolean }[];
  mode?: DrawMode;
  maxHeight?: number;
  onDragEnd?: (from: [number, number], to: [number, number]) => void;
  onTap?: (at: [number, number]) => void;
  onPaintStart?: (at: [number, number]) => void;
  onPaint?: (at: [number, number]) => void;
  onPaintEnd?: () => void;
  /** a short tap while moving and zooming (e.g. on a candidate's box) */
  onSelect?: (at: [number, number]) => void;
  /** numbered boxes drawn over the image (automatic finding's candidates) */
  marks?: CanvasMark[];
  label: string;
}

export interface CanvasMark {
  box: Box;
  /** shown in the box's corner, e.g. "2" */
  tag: string;
  color: string;
  /** the one shown now: drawn thicker */
  strong?: boolean;
  testID?: string;
}

const MIN_ZOOM = 1;
const MAX_ZOOM = 8;

export function ImageCanvas(props: CanvasProps) {
  const { t } = useI18n();
  const palette = usePalette();
  const { mode = 'pan', maxHeight = 520 } = props;
  const [frameWidth, setFrameWidth] = useState(0);
  const [view, setView] = useState({ zoom: 1, x: 0, y: 0 });
  const [draft, setDraft] = useState<Box | null>(null);

  const fit = frameWidth > 0 ? Math.min(frameWidth / props.width, maxHeight / props.height) : 0;
  const frame = { width: props.width * fit, height: props.height * fit };
  const scale = fit * view.zoom;

  // The gesture handlers are created once; they read the latest values through this ref.
  const live = useRef({ props, view, scale, frame, mode });
  useLayoutEffect(() => {
    live.current = { props, view, scale, frame, mode };
  });
  const gesture = useRef({ start: [0, 0] as [number, number], last: [0, 0] as [number, number], pinch: 0, view });

  const toImage = (e: GestureResponderEvent): [number, number] => {
    const { view: v, scale: s } = live.current;
    return [(e.nativeEvent.locationX - v.x) / s, (e.nativeEvent.locationY - v.y) / s];
  };
  const pinchDistance = (e: GestureResponderEvent) => {
    const [a, b] = e.nativeEvent.touches;
    return a && b ? Math.hypot(a.pageX - b.pageX, a.pageY - b.pageY) : 0;
  };

  const clampView = (zoom: number, x: number, y: number) => {
    const { frame: f } = live.current;
    const z = Math.min(MAX_ZOOM, Math.max(MIN_ZOOM, zoom));
    return { zoom: z, x: Math.min(0, Math.max(f.width - f.width * z, x)), y: Math.min(0, Math.max(f.height - f.height * z, y)) };
  };

  // Created once (a new responder mid-gesture would drop the gesture); it reads `live` only in events.
  // eslint-disable-next-line react-hooks/refs
  const [responder] = useState(() =>
      PanResponder.create({
        onStartShouldSetPanResponder: () => true,
        onMoveShouldSetPanResponder: () => true,
        onPanResponderTerminationRequest: () => false,
        onPanResponderGrant: (e) => {
          const at = toImage(e);
          gesture.current = { start: at, last: at, pinch: pinchDistance(e), view: live.current.view };
          if (live.current.mode === 'paint') live.current.props.onPaintStart?.(at);
        },
        onPanResponderMove: (e, g) => {
          const { mode: m, props: p } = live.current;
          if (e.nativeEvent.touches.length >= 2) {
            const d = pinchDistance(e);
            if (gesture.current.pinch === 0) gesture.current.pinch = d;
            const v0 = gesture.current.view;
            setView(clampView((v0.zoom * d) / gesture.current.pinch, v0.x, v0.y));
            return;
          }
          const at = toImage(e);
          gesture.current.last = at;
          if (m === 'pan') {
            const v0 = gesture.current.view;
            setView(clampView(v0.zoom, v0.x + g.dx, v0.y + g.dy));
          } else if (m === 'drag') {
            const [a, b] = [gesture.current.start, at];
            setDraft([Math.min(a[0], b[0]), Math.min(a[1], b[1]), Math.max(a[0], b[0]), Math.max(a[1], b[1])]);
          } else if (m === 'paint') {
            p.onPaint?.(at);
          }
        },
        onPanResponderRelease: (e, g) => {
          const { mode: m, props: p } = live.current;
          setDraft(null);
          if (m === 'drag') p.onDragEnd?.(gesture.current.start, gesture.current.last);
          else if (m === 'tap' && Math.hypot(g.dx, g.dy) < 8) p.onTap?.(gesture.current.start);
          else if (m === 'paint') p.onPaintEnd?.();
          else if (m === 'pan' && Math.hypot(g.dx, g.dy) < 8) p.onSelect?.(gesture.current.start);
        },
      }),
  );

  const zoomBy = (factor: number) =>
    setView((v) => {
      // zoom about the frame's centre
      const cx = frame.width / 2;
      const cy = frame.height / 2;
      const z = Math.min(MAX_ZOOM, Math.max(MIN_ZOOM, v.zoom * factor));
      return clampView(z, cx - ((cx - v.x) * z) / v.zoom, cy - ((cy - v.y) * z) / v.zoom);
    });

  const shown = draft ?? props.box ?? null;
  const place = (b: Box) => ({
    left: view.x + b[0] * scale, top: view.y + b[1] * scale, width: (b[2] - b[0]) * scale, height: (b[3] - b[1]) * scale,
  });
  const content = { left: view.x, top: view.y, width: props.width * scale, height: props.height * scale };

  return (
    <View onLayout={(e: LayoutChangeEvent) => setFrameWidth(e.nativeEvent.layout.width)} style={styles.outer}>
      <View
        {...responder.panHandlers}
        accessible
        accessibilityLabel={props.label}
        accessibilityHint={t(mode === 'pan' ? 'roi.hint.pan' : mode === 'drag' ? 'roi.hint.box' : mode === 'tap' ? 'roi.hint.points' : 'roi.hint.brush')}
        testID="image-canvas"
        style={[styles.frame, { width: frame.width, height: frame.height, borderColor: palette.border }]}
      >
        <View pointerEvents="none" style={StyleSheet.absoluteFill}>
          <Image source={{ uri: props.uri }} style={[styles.abs, content]} resizeMode="stretch" testID="canvas-image" />
          {(props.overlays ?? []).map((uri, i) => (
            <Image key={i} source={{ uri }} style={[styles.abs, content]} resizeMode="stretch" testID={`canvas-overlay-${i}`} />
          ))}
          {(props.marks ?? []).map((mark) => (
            <View key={mark.tag} testID={mark.testID} style={[styles.abs, styles.mark, place(mark.box),
              { borderColor: mark.color, borderWidth: mark.strong ? 3 : 2, borderStyle: mark.strong ? 'solid' : 'dashed' }]}>
              <Text style={[styles.tag, { backgroundColor: mark.color }]}>{mark.tag}</Text>
            </View>
          ))}
          {shown ? <View testID="canvas-box" style={[styles.abs, styles.box, place(shown)]} /> : null}
          {(props.points ?? []).map((p, i) => (
            <View
              key={i}
              style={[styles.abs, styles.point, {
                left: view.x + p.x * scale - 7, top: view.y + p.y * scale - 7,
                backgroundColor: p.lesion ? '#2ecc71' : '#e74c3c',
              }]}
            />
          ))}
        </View>
      </View>
      <Row>
        <Button variant="secondary" label="−" accessibilityLabel="Zoom out" onPress={() => zoomBy(1 / 1.5)} disabled={view.zoom <= MIN_ZOOM} />
        <Button variant="secondary" label="+" accessibilityLabel="Zoom in" onPress={() => zoomBy(1.5)} disabled={view.zoom >= MAX_ZOOM} />
        <Button variant="secondary" label="1:1" accessibilityLabel="Reset zoom" onPress={() => setView({ zoom: 1, x: 0, y: 0 })} />
        <Text style={{ color: palette.muted }}>{`${Math.round(view.zoom * 100)}%`}</Text>
      </Row>
    </View>
  );
}

const styles = StyleSheet.create({
  outer: { width: '100%', gap: 8, alignItems: 'center' },
  frame: { overflow: 'hidden', backgroundColor: '#000', borderWidth: StyleSheet.hairlineWidth },
  abs: { position: 'absolute' },
  box: { borderWidth: 2, borderColor: '#f1c40f' },
  mark: { overflow: 'visible' },
  tag: { position: 'absolute', left: -2, top: -2, minWidth: 18, paddingHorizontal: 4, color: '#000', fontSize: 12, fontWeight: '800', textAlign: 'center' },
  point: { width: 14, height: 14, borderRadius: 7, borderWidth: 2, borderColor: '#fff' },
});
