"""covidct.classify"""
