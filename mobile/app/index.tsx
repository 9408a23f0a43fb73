import { Redirect } from 'expo-router';

import { useSession } from '../src/session/SessionContext';

export default function Index() {
  const { restored, signedIn } = useSession();
  if (!restored) return null;
  return <Redirect href={signedIn ? '/new' : '/sign-in'} />;
}
