"""Operations on stored scans: listing and deletion. A library: it returns data and prints nothing."""
